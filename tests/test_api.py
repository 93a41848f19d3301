"""The service end to end: a real `retentive serve` (uvicorn and its learner child) over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil
import pytest

from bench.service import QUICK_LEARNER, eventually, metric_sample, serving
from tests import services

LABELS = {
    "astronomy": "the telescope saw a distant galaxy and a bright comet near the planet",
    "cooking": "stir the butter and garlic into the pan then bake the bread in the oven",
    "football": "the striker scored a goal and the goalkeeper saved a late penalty kick",
}
ADMIN, PREDICTOR = "admin-key-1", "predict-key-1"
SERVE_PID: dict[str, int] = {}


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[str]:
    data_dir = tmp_path_factory.mktemp("service")
    with serving(
        data_dir,
        model=tiny_model_dir,
        api_keys=f"{ADMIN}:admin;{PREDICTOR}:predict",
        **{**QUICK_LEARNER, "snapshot_every": 5, "publish_every_s": 5},
        eval_every=5,
        probe_fraction=0.2,
        probe_min_size=2,
        strategy="migu+replay",
    ) as (base, process):
        SERVE_PID[base] = process.pid
        yield base


def call(base: str, method: str, path: str, key: str | None = ADMIN, **kwargs: object) -> httpx.Response:
    return services.call(base, method, path, key, **kwargs)


def examples(count: int) -> list[dict[str, str]]:
    return [
        {"text": f"{text} {i}", "label": label, "id": f"{label}-{i}"}
        for i in range(count)
        for label, text in LABELS.items()
    ]


def test_before_any_feedback_predict_says_to_post_feedback(tmp_path: Path, tiny_model_dir: Path) -> None:
    with serving(tmp_path, "--no-learner", model=tiny_model_dir) as (base, _):
        response = call(base, "POST", "/v1/predict", key=None, json={"inputs": ["hello"]})
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "no_labels_yet"
        assert "post feedback" in response.json()["error"]["message"]
        assert call(base, "GET", "/v1/forgetting", key=None).json()["probes"] == []


def test_one_bad_example_refuses_the_request_and_writes_nothing(service: str) -> None:
    before = call(service, "GET", "/v1/model").json()["counters"].get("accepted", 0)
    body = {"examples": [{"text": "fine", "label": "ok"}, {"text": "bad", "label": "x" * 500}]}
    response = call(service, "POST", "/v1/feedback", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and "examples[1].label" in error["message"]
    unknown = call(
        service, "POST", "/v1/feedback", json={"examples": [{"text": "a", "label": "b", "colour": 1}]}
    )
    assert unknown.status_code == 422 and "examples[0].colour" in unknown.json()["error"]["message"]
    assert call(service, "GET", "/v1/model").json()["counters"].get("accepted", 0) == before


def test_keys_and_scopes_are_enforced(service: str) -> None:
    assert call(service, "POST", "/v1/predict", key=None, json={"inputs": ["x"]}).status_code == 401
    assert call(service, "POST", "/v1/predict", key="wrong", json={"inputs": ["x"]}).status_code == 401
    denied = call(
        service, "POST", "/v1/feedback", key=PREDICTOR, json={"examples": [{"text": "a", "label": "b"}]}
    )
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "forbidden"
    assert PREDICTOR not in denied.text
    assert call(service, "GET", "/healthz", key=None).status_code == 200


@dataclass(frozen=True)
class Taught:
    """The module's service after it was sent three new labels: what the posts answered, the counters
    before them, and the time the labels were served."""

    posted: httpx.Response
    again: httpx.Response
    accepted_before: int
    duplicates_before: int


def all_applied(service: str) -> bool:
    """Whether the learner has applied, held out or dead-lettered every accepted example, and said so."""
    after = call(service, "GET", "/v1/model").json()["counters"]
    done = after.get("applied", 0) + after.get("held_out", 0) + after.get("dead_lettered", 0)
    return done == after.get("accepted", 0)


@pytest.fixture(scope="module")
def taught(service: str) -> Taught:
    """Teach the module's service three labels and wait until they are served, every example is applied and
    a probe evaluation is recorded: the state the tests below read."""
    counters = call(service, "GET", "/v1/model").json()["counters"]
    posted = call(service, "POST", "/v1/feedback", json={"examples": examples(40)})
    again = call(service, "POST", "/v1/feedback", json={"examples": examples(2)})
    queries = [f"{text} again" for text in LABELS.values()]

    def learned() -> bool:
        response = call(service, "POST", "/v1/predict", json={"inputs": queries, "top_k": 3})
        if response.status_code != 200:
            return False
        return [p["label"] for p in response.json()["predictions"]] == list(LABELS)

    eventually(learned, timeout=120, what="predictions of the three new labels")
    eventually(lambda: all_applied(service), timeout=60, what="the learner to apply every example")
    eventually(
        lambda: call(service, "GET", "/v1/forgetting").json()["probes"] != [], 60, "a probe evaluation"
    )
    return Taught(posted, again, counters.get("accepted", 0), counters.get("duplicates", 0))


def test_feedback_for_new_labels_is_learned_and_served(service: str, taught: Taught) -> None:
    assert taught.posted.status_code == 202, taught.posted.text
    assert taught.posted.json()["accepted"] == 120 and taught.posted.json()["duplicates"] == 0
    again = taught.again.json()
    assert again == {"accepted": 0, "duplicates": 6, "stream_ids": again["stream_ids"]}

    queries = [f"{text} again" for text in LABELS.values()]
    answer = call(service, "POST", "/v1/predict", key=PREDICTOR, json={"inputs": queries, "top_k": 3}).json()
    assert [p["label"] for p in answer["predictions"]] == list(LABELS)
    assert answer["model_version"] >= 1 and len(answer["predictions"][0]["top"]) == 3

    model = call(service, "GET", "/v1/model").json()
    counters = model["counters"]
    assert counters["accepted"] - taught.accepted_before == 120
    assert counters["duplicates"] - taught.duplicates_before == 6
    assert (
        counters["applied"] + counters["held_out"] + counters.get("dead_lettered", 0) == counters["accepted"]
    )
    assert set(LABELS) <= set(model["labels"]) and model["learner"] == "running"

    forgetting = call(service, "GET", "/v1/forgetting").json()
    assert all(p["source"] == "held_out" and p["history"] for p in forgetting["probes"])
    assert 0.0 <= forgetting["summary"]["mean_accuracy"] <= 1.0


def test_operators_register_probes_and_pause_learning(service: str, taught: Taught) -> None:
    golden = {"examples": [{"text": text, "label": label} for label, text in LABELS.items()]}
    created = call(service, "PUT", "/v1/probes/golden", json=golden)
    assert created.status_code == 201, created.text
    assert call(service, "PUT", "/v1/probes/golden", json=golden).status_code == 200

    def golden_probe() -> dict:
        return next(p for p in call(service, "GET", "/v1/probes").json() if p["name"] == "golden")

    eventually(lambda: golden_probe()["accuracy"] is not None, 60, "the probe's first evaluation")
    assert golden_probe()["size"] == 3 and golden_probe()["source"] == "registered"

    paused = call(service, "POST", "/v1/learner/pause")
    assert paused.status_code == 200 and paused.json()["paused_reason"] == "paused by an operator"
    eventually(
        lambda: call(service, "GET", "/v1/model").json()["learner"] == "paused", 30, "the learner paused"
    )
    extra = [{"text": f"{LABELS['cooking']} once more {i}", "label": "cooking"} for i in range(4)]
    assert call(service, "POST", "/v1/feedback", json={"examples": extra}).status_code == 202
    # Nothing happening has no event to wait for: give the paused learner a few of its polls to take them.
    time.sleep(1.5)
    assert call(service, "GET", "/v1/model").json()["stream_lag"] == 4

    resumed = call(service, "POST", "/v1/learner/resume")
    assert resumed.status_code == 200 and resumed.json()["paused_reason"] is None
    eventually(lambda: call(service, "GET", "/v1/model").json()["stream_lag"] == 0, 60, "the held feedback")
    model = call(service, "GET", "/v1/model").json()
    assert model["learner"] == "running" and model["last_snapshot_at"] is not None

    assert call(service, "DELETE", "/v1/probes/golden").status_code == 204
    assert call(service, "DELETE", "/v1/probes/golden").json()["error"]["code"] == "probe_not_found"
    assert all(p["name"] != "golden" for p in call(service, "GET", "/v1/probes").json())


def test_real_text_with_unicode_line_breaks_is_accepted_and_a_lookalike_label_is_refused(
    service: str, taught: Taught
) -> None:
    reviews = [
        {"text": f"{LABELS['cooking']}\x85the bread was burnt", "label": "cooking"},
        {"text": f"{LABELS['football']}\u2028what a match\u2029", "label": "football"},
    ]
    created = call(service, "PUT", "/v1/probes/reviews", json={"examples": reviews})
    assert created.status_code == 201, created.text
    assert call(service, "DELETE", "/v1/probes/reviews").status_code == 204
    answered = call(service, "POST", "/v1/predict", json={"inputs": [reviews[1]["text"]]})
    assert answered.status_code == 200, answered.text

    before = call(service, "GET", "/v1/model").json()["counters"].get("accepted", 0)
    lookalike = {"examples": [{"text": "a late penalty kick", "label": "foot\u200bball"}]}
    refused = call(service, "POST", "/v1/feedback", json=lookalike)
    assert refused.status_code == 422 and "examples[0].label" in refused.json()["error"]["message"]
    assert "invisible format character U+200B" in refused.json()["error"]["message"]
    assert call(service, "GET", "/v1/model").json()["counters"].get("accepted", 0) == before


def test_metrics_and_snapshots_report_what_happened(service: str, taught: Taught) -> None:
    call(service, "POST", "/v1/predict", json={"inputs": ["a bright comet"]})
    metrics = call(service, "GET", "/metrics").text
    assert (
        "retentive_predictions_total" in metrics and 'retentive_forgetting{stat="max_forgetting"}' in metrics
    )
    assert "held_out:" not in metrics  # held-out set names hold label text; /metrics needs no key
    version = call(service, "GET", "/v1/model").json()["model_version"]
    assert f"retentive_model_version {float(version)}" in metrics
    assert "retentive_migu_keep_rate" in metrics and "retentive_predict_batch_texts_count" in metrics
    # The model's share of the answers' time is there to read, and is part of it.
    forward_s = metric_sample(metrics, "retentive_predict_batch_seconds_sum")
    answer_s = metric_sample(metrics, "retentive_request_seconds_sum", route="/v1/predict", status="200")
    assert 0 < forward_s < answer_s
    snapshots = call(service, "GET", "/v1/snapshots").json()
    versions = [s["version"] for s in snapshots]
    assert versions == sorted(versions, reverse=True) and versions[-1] <= version


def test_operators_pin_a_snapshot_past_retention(service: str, taught: Taught) -> None:
    oldest = call(service, "GET", "/v1/snapshots").json()[-1]
    pinned = call(service, "PUT", f"/v1/snapshots/{oldest['id']}/pin")
    assert pinned.status_code == 200 and pinned.json()["pinned"] is True
    assert call(service, "PUT", f"/v1/snapshots/{oldest['id']}/pin", key=PREDICTOR).status_code == 403
    # The learner keeps the 5 newest snapshots (and the best): feed until 5 newer ones were kept, which
    # retention alone would have pruned the pinned one for.
    more = [{"text": f"{LABELS['astronomy']} pinned {i}", "label": "astronomy"} for i in range(120)]
    assert call(service, "POST", "/v1/feedback", json={"examples": more}).status_code == 202

    def listed() -> list[dict]:
        return call(service, "GET", "/v1/snapshots").json()

    def newer() -> int:
        return len([s for s in listed() if s["version"] > oldest["version"]])

    eventually(lambda: newer() >= 5, 120, "five newer snapshots")
    assert any(s["id"] == oldest["id"] and s["pinned"] for s in listed())
    unpinned = call(service, "DELETE", f"/v1/snapshots/{oldest['id']}/pin")
    assert unpinned.status_code == 200 and unpinned.json()["pinned"] is False
    missing = call(service, "PUT", "/v1/snapshots/00009999-aaaaaaaaaaaa/pin")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "snapshot_not_found"


def test_feedback_posted_one_at_a_time_is_scored_before_it_is_learned(service: str, taught: Taught) -> None:
    def state() -> tuple[int, dict]:
        counters = call(service, "GET", "/v1/model").json()["counters"]
        return counters.get("applied", 0), call(service, "GET", "/v1/forgetting").json()["prequential"]

    # Feedback of earlier tests may still be in the learner's hands: start from a state it has reported whole.
    eventually(lambda: all_applied(service), 60, "the learner to apply every earlier example")
    applied_before, before = state()
    for i, (label, text) in enumerate(list(LABELS.items()) * 3):
        one = {"examples": [{"text": f"{text} one at a time {i}", "label": label, "id": f"single-{i}"}]}
        assert call(service, "POST", "/v1/feedback", json=one).status_code == 202
        # As a person labelling one text after another: the next is posted once this one is consumed.
        eventually(lambda: call(service, "GET", "/v1/model").json()["stream_lag"] == 0, 120, "the example")

    def reported() -> bool:
        applied, prequential = state()
        return prequential["scored"] - before["scored"] == applied - applied_before

    eventually(reported, 60, "the learner to report its prequential accuracy")
    applied, after = state()
    assert applied > applied_before, "some of the nine were trained on, not all held out"
    assert 0.0 <= after["cumulative"] <= 1.0 and 0.0 <= after["last_1000"] <= 1.0
    assert set(LABELS) <= set(after["per_label"])
    metrics = call(service, "GET", "/metrics").text
    assert 'retentive_prequential_accuracy{window="last_1000"}' in metrics


def test_killed_learner_child_leaves_predictions_up_and_is_restarted(service: str, taught: Taught) -> None:
    [child] = psutil.Process(SERVE_PID[service]).children()
    child.kill()
    query = {"inputs": [next(iter(LABELS.values()))]}
    assert call(service, "POST", "/v1/predict", json=query).status_code == 200
    eventually(lambda: call(service, "GET", "/v1/model").json()["learner"] == "absent", 30, "learner absent")
    assert call(service, "POST", "/v1/predict", json=query).status_code == 200
    eventually(lambda: call(service, "GET", "/v1/model").json()["learner"] == "running", 60, "a new learner")
    [restarted] = psutil.Process(SERVE_PID[service]).children()
    assert restarted.pid != child.pid
