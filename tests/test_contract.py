"""The HTTP contract of an API replica (`retentive serve --no-learner` over real HTTP): who may call each
route, every request limit, and schemathesis against the served OpenAPI schema."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from app.settings import Settings
from bench.service import serving
from tests import services
from tests.services import write_snapshot

KEYS = {"admin": "contract-admin", "predict": "contract-predict", "feedback": "contract-feedback"}
LIMITS = {
    "max_body_bytes": 20_000,
    "max_inputs": 4,
    "max_examples": 3,
    "max_text_chars": 200,
    "max_label_chars": 20,
}
# The scope each route needs; None means open. Every route of the schema must be listed here.
SCOPES = {
    ("POST", "/v1/predict"): "predict",
    ("GET", "/v1/forgetting"): "predict",
    ("GET", "/v1/model"): "predict",
    ("GET", "/v1/snapshots"): "predict",
    ("GET", "/v1/probes"): "predict",
    ("GET", "/v1/evaluations"): "predict",
    ("GET", "/v1/versions"): "predict",
    ("GET", "/v1/learner"): "predict",
    ("POST", "/v1/feedback"): "feedback",
    ("POST", "/v1/snapshots/{snapshot_id}/rollback"): "admin",
    ("PUT", "/v1/snapshots/{snapshot_id}/pin"): "admin",
    ("DELETE", "/v1/snapshots/{snapshot_id}/pin"): "admin",
    ("PUT", "/v1/probes/{name}"): "admin",
    ("DELETE", "/v1/probes/{name}"): "admin",
    ("POST", "/v1/learner/pause"): "admin",
    ("POST", "/v1/learner/resume"): "admin",
    ("GET", "/v1/dead-letters"): "admin",
    ("POST", "/v1/dead-letters/requeue"): "admin",
    ("POST", "/v1/labels/remove"): "admin",
    ("GET", "/healthz"): None,
    ("GET", "/readyz"): None,
    ("GET", "/metrics"): None,
}
BODIES = {
    "/v1/predict": {"inputs": ["a short text"]},
    "/v1/feedback": {"examples": [{"text": "a short text", "label": "news"}]},
    "/v1/probes/{name}": {"examples": [{"text": "a probe text", "label": "news"}]},
    "/v1/dead-letters/requeue": {"all": True},
    "/v1/labels/remove": {"labels": ["news"]},
}


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[tuple[str, str]]:
    """The replica's base URL and the id of its one snapshot."""
    data_dir = tmp_path_factory.mktemp("contract")
    snapshot_id = write_snapshot(Settings(model=str(tiny_model_dir), data_dir=data_dir))
    with serving(
        data_dir,
        "--no-learner",
        model=tiny_model_dir,
        api_keys=";".join(f"{key}:{scope}" for scope, key in KEYS.items()),
        **LIMITS,
    ) as (base, _):
        yield base, snapshot_id


@pytest.fixture(scope="module")
def base(replica: tuple[str, str]) -> str:
    return replica[0]


def call(
    base: str, method: str, path: str, key: str | None = KEYS["admin"], **kwargs: object
) -> httpx.Response:
    return services.call(base, method, path, key, **kwargs)


def stream_lag(base: str) -> int:
    return call(base, "GET", "/v1/model").json()["stream_lag"]


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def test_every_route_in_the_schema_has_a_decided_scope(base: str) -> None:
    paths = call(base, "GET", "/openapi.json").json()["paths"]
    served = {(method.upper(), path) for path, methods in paths.items() for method in methods}
    assert served == set(SCOPES)


@pytest.mark.parametrize(("method", "path"), sorted(SCOPES), ids=[f"{m} {p}" for m, p in sorted(SCOPES)])
def test_auth_matrix(replica: tuple[str, str], method: str, path: str) -> None:
    base, snapshot_id = replica
    url = path.format(snapshot_id=snapshot_id, name="matrix")
    body = BODIES.get(path)
    needed = SCOPES[(method, path)]
    if needed is not None:
        for key in (None, "not-a-key", f"{KEYS['admin']}x"):
            refused = error_of(call(base, method, url, key=key, json=body), 401)
            assert refused["code"] == "unauthorized" and "Authorization: Bearer" in refused["message"]
        for scope, key in KEYS.items():
            if scope not in (needed, "admin"):
                refused = error_of(call(base, method, url, key=key, json=body), 403)
                assert refused["code"] == "forbidden" and needed in refused["message"]
                assert key not in refused["message"]
    if method == "DELETE":
        call(base, "PUT", url, json=BODIES.get(path))
    allowed = [None] if needed is None else [KEYS[needed], KEYS["admin"]]
    for key in allowed:
        response = call(base, method, url, key=key, json=body)
        assert response.status_code < 300, response.text
        if method == "DELETE":
            call(base, "PUT", url, json=BODIES.get(path))
    if path.startswith("/v1/learner/"):
        call(base, "POST", "/v1/learner/resume")


def test_a_refused_request_does_not_reach_the_stream(base: str) -> None:
    before = stream_lag(base)
    call(base, "POST", "/v1/feedback", key=KEYS["predict"], json=BODIES["/v1/feedback"])
    call(base, "POST", "/v1/feedback", key=None, json=BODIES["/v1/feedback"])
    assert stream_lag(base) == before


def test_body_size_limit(base: str) -> None:
    before = stream_lag(base)
    big = {"examples": [{"text": "x" * 150, "label": "big"}] * 200}
    refused = error_of(call(base, "POST", "/v1/feedback", json=big), 413)
    assert refused["code"] == "body_too_large" and "RETENTIVE_MAX_BODY_BYTES" in refused["message"]

    def chunks() -> Iterator[bytes]:
        yield b'{"examples": ['
        for _ in range(200):
            yield b'{"text": "' + b"y" * 150 + b'", "label": "big"},'
        yield b'{"text": "end", "label": "big"}]}'

    # A chunked body declares no length, so the limit must be enforced on the bytes as they arrive.
    headers = {"Authorization": f"Bearer {KEYS['admin']}", "Content-Type": "application/json"}
    chunked = httpx.post(f"{base}/v1/feedback", content=chunks(), headers=headers, timeout=30)
    assert error_of(chunked, 413)["code"] == "body_too_large"
    assert stream_lag(base) == before


def test_inputs_per_request_limit(base: str) -> None:
    refused = error_of(call(base, "POST", "/v1/predict", json={"inputs": ["a"] * 5}), 422)
    assert refused["details"][0]["field"] == "inputs" and "RETENTIVE_MAX_INPUTS" in refused["message"]
    assert call(base, "POST", "/v1/predict", json={"inputs": ["a"] * 4}).status_code == 200


def test_characters_per_text_limit(base: str) -> None:
    refused = error_of(call(base, "POST", "/v1/predict", json={"inputs": ["ok", "x" * 201]}), 422)
    assert refused["details"][0]["field"] == "inputs[1]" and "200" in refused["message"]
    before = stream_lag(base)
    long_text = {"examples": [{"text": "ok", "label": "a"}, {"text": "x" * 201, "label": "a"}]}
    refused = error_of(call(base, "POST", "/v1/feedback", json=long_text), 422)
    assert refused["details"][0]["field"] == "examples[1].text"
    assert stream_lag(base) == before


def test_label_length_limit(base: str) -> None:
    before = stream_lag(base)
    body = {"examples": [{"text": "ok", "label": "l" * 21}]}
    refused = error_of(call(base, "POST", "/v1/feedback", json=body), 422)
    assert refused["details"][0]["field"] == "examples[0].label" and "20" in refused["message"]
    assert stream_lag(base) == before


@pytest.mark.parametrize(
    ("label", "says"),
    [("a\u0000b", "control character U+0000"), ("new\nline", "U+000A"), ("   ", "whitespace"), ("", "empty")],
)
def test_label_characters_limit(base: str, label: str, says: str) -> None:
    before = stream_lag(base)
    body = {"examples": [{"text": "fine", "label": "fine"}, {"text": "ok", "label": label}]}
    refused = error_of(call(base, "POST", "/v1/feedback", json=body), 422)
    assert refused["details"][0]["field"] == "examples[1].label" and says in refused["message"]
    assert stream_lag(base) == before


def test_examples_per_request_limit(base: str) -> None:
    before = stream_lag(base)
    body = {"examples": [{"text": f"text {i}", "label": "a"} for i in range(4)]}
    refused = error_of(call(base, "POST", "/v1/feedback", json=body), 422)
    assert refused["details"][0]["field"] == "examples" and "RETENTIVE_MAX_EXAMPLES" in refused["message"]
    assert stream_lag(base) == before


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("/v1/predict", {"inputs": ["a"], "colour": "red"}, "colour"),
        ("/v1/feedback", {"examples": [{"text": "a", "label": "b", "weight": 2}]}, "examples[0].weight"),
        ("/v1/probes/extra", {"examples": [{"text": "a", "label": "b"}], "size": 1}, "size"),
    ],
)
def test_unknown_fields_are_refused(base: str, path: str, body: dict, field: str) -> None:
    method = "PUT" if path.startswith("/v1/probes") else "POST"
    before = stream_lag(base)
    refused = error_of(call(base, method, path, json=body), 422)
    assert refused["details"][0]["field"] == field and "Extra inputs" in refused["message"]
    assert stream_lag(base) == before
    assert "extra" not in [probe["name"] for probe in call(base, "GET", "/v1/probes").json()]


schema = schemathesis.pytest.from_fixture("openapi_schema")
SCHEMA_CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def openapi_schema(base: str) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{base}/openapi.json")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_schema_holds_for_generated_requests(case: schemathesis.Case) -> None:
    """Generated requests, valid and invalid, never get a 5xx or a response the schema does not describe."""
    case.call_and_validate(
        headers={"Authorization": f"Bearer {KEYS['admin']}"},
        checks=SCHEMA_CHECKS,
        timeout=30,
    )
