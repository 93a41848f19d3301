"""What a user should see before starting the service: model, torch, Redis, data directory, disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from app.settings import Settings
from learner.devices import describe, resolve_device, resolve_precision
from learner.encoder import load_encoder, looks_like_path, parameter_count
from streams.connection import connect, durability_warnings, embedded_dir, redacted, server_version


def doctor_report(settings: Settings) -> list[tuple[str, str]]:
    """Rows of (what, value), each read from the running system; raises on a setting that cannot work."""
    rows = [("model", settings.model)]
    rows.append(("model files", _model_files_size(settings.model)))
    _, encoder = load_encoder(settings.model)
    rows.append(("model parameters", f"{parameter_count(encoder) / 1e6:.1f}M ({type(encoder).__name__})"))
    rows.append(("torch", f"{torch.__version__}, {torch.get_num_threads()} threads available"))
    rows.append(("thread budget", f"api {settings.api_threads}, learner {settings.learner_threads}"))
    device = resolve_device(settings.device)
    precision = resolve_precision(settings.precision, device)
    chosen = f"{precision} (auto)" if settings.precision == "auto" else precision
    rows.append(("learner device", f"{describe(device)}, {chosen}"))
    served = "int8 dynamic (RETENTIVE_SERVE_QUANTIZE)" if settings.serve_quantize else "fp32"
    rows.append(("api device", f"{describe(resolve_device(settings.serving_device()))}, {served}"))
    client = connect(settings.redis_url, settings.data_dir)
    where = (
        redacted(settings.redis_url)
        if settings.redis_url
        else f"embedded, files in {embedded_dir(settings.data_dir).resolve()}"
    )
    rows.append(("redis", f"{where} (server {server_version(client)})"))
    rows += [("warning", warning) for warning in durability_warnings(client)]
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    rows.append(("data dir", str(settings.data_dir.resolve())))
    rows.append(("snapshots", redacted(str(settings.snapshot_dir))))
    rows.append(("free disk", f"{shutil.disk_usage(settings.data_dir).free / 2**30:.1f} GiB"))
    return rows


def _model_files_size(model: str) -> str:
    if not looks_like_path(model):
        return "hub model (size known once cached)"
    total = sum(f.stat().st_size for f in Path(model).expanduser().rglob("*") if f.is_file())
    return f"{total / 2**20:.1f} MiB on disk"
