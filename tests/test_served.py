"""Served predictions remembered in Redis, and feedback joined to them once."""

from __future__ import annotations

import time

import pytest
import redis

from streams.keys import StreamKeys
from streams.served import PERIODS, Served, ServedLog, join_feedback, served_report

DAY = 24 * 3600.0
# Predictions are kept until a real time: the tests' clock starts at the real one.
NOW = time.time()


@pytest.fixture
def log(redis_client: redis.Redis, key_prefix: str) -> ServedLog:
    return ServedLog(redis_client, StreamKeys(key_prefix, "m"), ttl_s=DAY, cap=PERIODS * 3)


def _serve(log: ServedLog, answers: list[tuple[int, str]], now: float) -> list[str]:
    ids = [log.new_id(now) for _ in answers]
    log.remember(
        [Served(pid, version, label, 0.9) for pid, (version, label) in zip(ids, answers, strict=True)], now
    )
    return ids


def test_feedback_naming_predictions_gives_their_accuracy_per_version_and_label_with_its_delay(
    log: ServedLog,
) -> None:
    ids = _serve(log, [(1, "sports"), (1, "sports"), (2, "finance")], now=NOW)
    joined = join_feedback(log.client, log.keys, [(ids[0], "sports"), (ids[1], "finance")], now=NOW + 10)
    assert joined == 2
    report = served_report(log.client, log.keys)
    assert (report["predictions"], report["joined"], report["accuracy"]) == (3, 2, 0.5)
    assert report["coverage"] == pytest.approx(2 / 3)
    assert report["mean_delay_s"] == pytest.approx(10.0, abs=0.01)
    assert report["last_1000"] == {
        "joined": 2,
        "accuracy": 0.5,
        "median_delay_s": pytest.approx(10.0, abs=0.01),
    }
    assert report["per_version"] == [{"model_version": 1, "joined": 2, "accuracy": 0.5}]
    assert report["per_label"] == [
        {"label": "finance", "joined": 1, "accuracy": 0.0},
        {"label": "sports", "joined": 1, "accuracy": 1.0},
    ]
    summary = served_report(log.client, log.keys, breakdown=False)
    assert summary["accuracy"] == 0.5 and summary["per_label"] == [] and summary["per_version"] == []


def test_a_prediction_is_joined_once_and_unknown_or_foreign_ids_count_nothing(log: ServedLog) -> None:
    (pid,) = _serve(log, [(1, "sports")], now=NOW)
    assert join_feedback(log.client, log.keys, [(pid, "sports")], now=NOW + 1) == 1
    again = [(pid, "finance"), ("not-a-period", "x"), ("client-chosen-id", "x"), ("ff-unknown", "x")]
    assert join_feedback(log.client, log.keys, again, now=NOW + 2) == 0
    assert served_report(log.client, log.keys)["accuracy"] == 1.0


def test_predictions_past_the_cap_are_answered_unremembered_and_a_period_expires_whole(
    log: ServedLog,
) -> None:
    now = time.time()
    _serve(log, [(1, "a")] * 5, now=now)  # the cap allows 3 per period
    report = served_report(log.client, log.keys)
    assert (report["predictions"], report["unremembered"]) == (3, 2)
    period_key = log.keys.served_period(int(now // log.period_s))
    # Kept at least the TTL after it was made, at most one period longer (the test's own time aside).
    assert DAY - 60 <= log.client.ttl(period_key) <= DAY + log.period_s + 1


def test_an_answer_remembered_just_after_its_period_ended_is_still_joined(log: ServedLog) -> None:
    made = (NOW // log.period_s + 1) * log.period_s - 0.001  # the last millisecond of a period
    pid = log.new_id(made)
    log.remember([Served(pid, 1, "sports", 0.9)], now=made + 0.01)
    assert join_feedback(log.client, log.keys, [(pid, "sports")], now=made + 5) == 1
