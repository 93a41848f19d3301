"""The service end to end: a real `retentive serve` (uvicorn and its learner child) over real HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.polling import eventually
from tests.services import QUICK_LEARNER, serving

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
        strategy="migu+replay",
    ) as (base, process):
        SERVE_PID[base] = process.pid
        yield base


def call(base: str, method: str, path: str, key: str | None = ADMIN, **kwargs: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.request(method, f"{base}{path}", headers=headers, timeout=30, **kwargs)


def examples(count: int) -> list[dict[str, str]]:
    return [
        {"text": f"{text} {i}", "label": label, "id": f"{label}-{i}"}
        for i in range(count)
        for label, text in LABELS.items()
    ]


def test_before_any_feedback_predict_says_to_post_feedback(service: str) -> None:
    response = call(service, "POST", "/v1/predict", json={"inputs": ["hello"]})
    if response.status_code == 200:
        pytest.skip("the module's learner already published a model")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_labels_yet"
    assert "post feedback" in response.json()["error"]["message"]
    assert call(service, "GET", "/v1/forgetting").json()["probes"] == []


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


def test_feedback_for_new_labels_is_learned_and_served(service: str) -> None:
    posted = call(service, "POST", "/v1/feedback", json={"examples": examples(40)})
    assert posted.status_code == 202, posted.text
    assert posted.json()["accepted"] == 120 and posted.json()["duplicates"] == 0
    again = call(service, "POST", "/v1/feedback", json={"examples": examples(2)})
    assert again.json() == {"accepted": 0, "duplicates": 6, "stream_ids": again.json()["stream_ids"]}

    queries = [f"{text} again" for text in LABELS.values()]

    def learned() -> bool:
        response = call(service, "POST", "/v1/predict", json={"inputs": queries, "top_k": 3})
        if response.status_code != 200:
            return False
        return [p["label"] for p in response.json()["predictions"]] == list(LABELS)

    eventually(learned, timeout=120, what="predictions of the three new labels")
    answer = call(service, "POST", "/v1/predict", key=PREDICTOR, json={"inputs": queries, "top_k": 3}).json()
    assert answer["model_version"] >= 1 and len(answer["predictions"][0]["top"]) == 3

    def settled() -> bool:
        counters = call(service, "GET", "/v1/model").json()["counters"]
        return counters.get("applied", 0) + counters.get("held_out", 0) == 120

    eventually(settled, timeout=60, what="the learner to apply every example")
    model = call(service, "GET", "/v1/model").json()
    counters = model["counters"]
    assert counters["accepted"] == 120 and counters["duplicates"] == 6
    assert (
        counters["applied"] + counters["held_out"] + counters.get("dead_lettered", 0) == counters["accepted"]
    )
    assert sorted(model["labels"]) == sorted(LABELS) and model["learner"] == "running"

    eventually(
        lambda: call(service, "GET", "/v1/forgetting").json()["probes"] != [], 60, "a probe evaluation"
    )
    forgetting = call(service, "GET", "/v1/forgetting").json()
    assert all(p["source"] == "held_out" and p["history"] for p in forgetting["probes"])
    assert 0.0 <= forgetting["summary"]["mean_accuracy"] <= 1.0


def test_operators_register_probes_and_pause_learning(service: str) -> None:
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


def test_metrics_and_snapshots_report_what_happened(service: str) -> None:
    call(service, "POST", "/v1/predict", json={"inputs": ["a bright comet"]})
    metrics = call(service, "GET", "/metrics").text
    assert "retentive_predictions_total" in metrics and "retentive_probe_accuracy{probe=" in metrics
    version = call(service, "GET", "/v1/model").json()["model_version"]
    assert f"retentive_model_version {float(version)}" in metrics
    assert "retentive_migu_keep_rate" in metrics and "retentive_predict_batch_texts_count" in metrics
    snapshots = call(service, "GET", "/v1/snapshots").json()
    versions = [s["version"] for s in snapshots]
    assert versions == sorted(versions, reverse=True) and versions[-1] <= version


def test_killed_learner_child_leaves_predictions_up_and_is_restarted(service: str) -> None:
    [child] = psutil.Process(SERVE_PID[service]).children()
    child.kill()
    query = {"inputs": [next(iter(LABELS.values()))]}
    assert call(service, "POST", "/v1/predict", json=query).status_code == 200
    eventually(lambda: call(service, "GET", "/v1/model").json()["learner"] == "absent", 30, "learner absent")
    assert call(service, "POST", "/v1/predict", json=query).status_code == 200
    eventually(lambda: call(service, "GET", "/v1/model").json()["learner"] == "running", 60, "a new learner")
    [restarted] = psutil.Process(SERVE_PID[service]).children()
    assert restarted.pid != child.pid
