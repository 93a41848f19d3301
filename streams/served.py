"""Served predictions, remembered for a while, and the feedback joined to them: how right were the answers
people actually got.

Each answered prediction is kept under its `prediction_id` with the model version, label, score and time.
The id carries the period it was made in (`{period:x}-{random}`), so a prediction is found with one hash
lookup, and a whole period expires at once, `ttl_s` after it ends. Bounds: the TTL, and at most
`cap / PERIODS` predictions per period (a period is `ttl_s / PERIODS` long), so never more than about
`cap` (plus one period's share) are kept; predictions past the bound are answered but not remembered, and
counted.

Feedback that names a remembered prediction is joined to it once: the join removes the prediction, so a
repeated or replayed feedback entry counts nothing twice. The join updates the totals (overall, per model
version, per label, delay from prediction to feedback) and the outcome of the last `RECENT` joins.
"""

from __future__ import annotations

import json
import statistics
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis

from streams.keys import StreamKeys
from streams.replies import as_text

PERIODS = 24
RECENT = 1000
VERSIONS_REPORTED = 20
_TOTALS = ["predictions", "unremembered", "joined", "right", "delay_s"]

# KEYS[1] period hash, KEYS[2] totals hash; ARGV: most per period, expire-at (unix s), then id/record pairs.
_REMEMBER = """
local room = tonumber(ARGV[1]) - redis.call('HLEN', KEYS[1])
local offered = (#ARGV - 2) / 2
local kept = 0
for i = 3, #ARGV, 2 do
    if kept >= room then break end
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    kept = kept + 1
end
if kept > 0 then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
redis.call('HINCRBY', KEYS[2], 'predictions', kept)
redis.call('HINCRBY', KEYS[2], 'unremembered', offered - kept)
return kept
"""

# KEYS[1] totals hash, KEYS[2] recent list, KEYS[3..] the period hash of each joined prediction;
# ARGV: now (unix s), then prediction id and feedback label per feedback.
_JOIN = """
local now = tonumber(ARGV[1])
local joined = 0
for i = 3, #KEYS do
    local id, label = ARGV[2 * (i - 2)], ARGV[2 * (i - 2) + 1]
    local raw = redis.call('HGET', KEYS[i], id)
    if raw then
        redis.call('HDEL', KEYS[i], id)
        local served = cjson.decode(raw)
        local right = (served.l == label) and 1 or 0
        local delay = math.max(0, now - served.t)
        redis.call('HINCRBY', KEYS[1], 'joined', 1)
        redis.call('HINCRBY', KEYS[1], 'right', right)
        redis.call('HINCRBYFLOAT', KEYS[1], 'delay_s', delay)
        redis.call('HINCRBY', KEYS[1], 'vj:' .. served.v, 1)
        redis.call('HINCRBY', KEYS[1], 'vr:' .. served.v, right)
        redis.call('HINCRBY', KEYS[1], 'lj:' .. label, 1)
        redis.call('HINCRBY', KEYS[1], 'lr:' .. label, right)
        redis.call('LPUSH', KEYS[2], right .. ' ' .. delay)
        joined = joined + 1
    end
end
redis.call('LTRIM', KEYS[2], 0, tonumber(ARGV[#ARGV]) - 1)
return joined
"""


@dataclass(frozen=True)
class Served:
    """One answered prediction to remember."""

    prediction_id: str
    model_version: int
    label: str
    score: float


class ServedLog:
    """Remembers served predictions and joins feedback to them, in one model's Redis keys."""

    def __init__(self, client: redis.Redis, keys: StreamKeys, ttl_s: float, cap: int) -> None:
        if ttl_s <= 0 or cap < PERIODS:
            raise ValueError(f"ttl_s must be positive and cap at least {PERIODS}")
        self.client, self.keys = client, keys
        self.period_s = ttl_s / PERIODS
        self.ttl_s = ttl_s
        self.per_period = cap // PERIODS
        self._remember = client.register_script(_REMEMBER)

    def new_id(self, now: float | None = None) -> str:
        """A fresh prediction id that names the period it was made in."""
        return f"{self._period(time.time() if now is None else now):x}-{uuid.uuid4().hex}"

    def remember(self, served: Sequence[Served], now: float | None = None) -> int:
        """Keep these predictions, made `now`, each in the period its id names (which `now` may have
        passed), while the bound allows; how many were kept."""
        now = time.time() if now is None else now
        by_period: dict[int, list[str]] = {}
        for item in served:
            period = _period_of(item.prediction_id)
            if period is None:
                raise ValueError(f"{item.prediction_id!r} is not an id from new_id")
            record = {"v": item.model_version, "l": item.label, "s": round(item.score, 4), "t": round(now, 3)}
            by_period.setdefault(period, []).extend(
                [item.prediction_id, json.dumps(record, separators=(",", ":"))]
            )
        kept = 0
        for period, pairs in by_period.items():
            expire_at = int((period + 1) * self.period_s + self.ttl_s) + 1
            keys = [self.keys.served_period(period), self.keys.served]
            kept += int(self._remember(keys=keys, args=[self.per_period, expire_at, *pairs]))
        return kept

    def _period(self, now: float) -> int:
        return int(now // self.period_s)


def join_feedback(
    client: redis.Redis, keys: StreamKeys, feedback: Sequence[tuple[str, str]], now: float | None = None
) -> int:
    """Join (prediction_id, label) feedback to the remembered predictions it names; how many were joined.

    Ids this service did not make, or whose prediction expired or was already joined, are skipped."""
    found = [(pid, label, period) for pid, label in feedback if (period := _period_of(pid)) is not None]
    if not found:
        return 0
    periods = [keys.served_period(period) for *_, period in found]
    args: list[str | float] = [time.time() if now is None else now]
    for pid, label, _ in found:
        args += [pid, label]
    script = client.register_script(_JOIN)
    return int(script(keys=[keys.served, keys.served_recent, *periods], args=[*args, RECENT]))


def _period_of(prediction_id: str) -> int | None:
    head, dash, tail = prediction_id.partition("-")
    if not dash or not tail:
        return None
    try:
        return int(head, 16)
    except ValueError:
        return None


def served_report(client: redis.Redis, keys: StreamKeys, breakdown: bool = True) -> dict[str, Any]:
    """Accuracy of served predictions that got feedback: overall, over the last `RECENT` joins, per model
    version (the newest `VERSIONS_REPORTED`) and per label; the label delay; and the share of remembered
    predictions that got feedback. Without `breakdown` the per-version and per-label lists are left empty
    and only a fixed handful of fields is read."""
    if breakdown:
        totals = {as_text(k): as_text(v) for k, v in client.hgetall(keys.served).items()}
    else:
        values = client.hmget(keys.served, _TOTALS)
        totals = {
            field: as_text(value) for field, value in zip(_TOTALS, values, strict=True) if value is not None
        }
    recent = [as_text(item).split() for item in client.lrange(keys.served_recent, 0, RECENT - 1)]
    joined, right = int(totals.get("joined", 0)), int(totals.get("right", 0))
    predictions = int(totals.get("predictions", 0))
    delays = [float(delay) for _, delay in recent]
    return {
        "predictions": predictions,
        "unremembered": int(totals.get("unremembered", 0)),
        "joined": joined,
        "coverage": joined / predictions if predictions else None,
        "accuracy": right / joined if joined else None,
        "last_1000": {
            "joined": len(recent),
            "accuracy": sum(outcome == "1" for outcome, _ in recent) / len(recent) if recent else None,
            "median_delay_s": statistics.median(delays) if delays else None,
        },
        "mean_delay_s": float(totals.get("delay_s", 0)) / joined if joined else None,
        "per_version": [
            {"model_version": int(version), **counts}
            for version, counts in sorted(_breakdown(totals, "v").items(), key=lambda item: int(item[0]))
        ][-VERSIONS_REPORTED:],
        "per_label": [
            {"label": label, **counts} for label, counts in sorted(_breakdown(totals, "l").items())
        ],
    }


def _breakdown(totals: dict[str, str], kind: str) -> dict[str, dict[str, Any]]:
    """Joined count and accuracy per version ("v") or per label ("l"), from the totals' fields."""
    joined = {field[3:]: int(count) for field, count in totals.items() if field.startswith(f"{kind}j:")}
    return {
        name: {"joined": count, "accuracy": int(totals.get(f"{kind}r:{name}", 0)) / count}
        for name, count in joined.items()
    }
