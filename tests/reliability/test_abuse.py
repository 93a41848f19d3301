"""An API replica (`retentive serve --no-learner`, default limits, scoped keys) under hostile input: every
malformed request gets a clear 4xx and writes nothing, client text never becomes a Redis key or a path, keys
never leak, and (long) schemathesis sends a few thousand generated requests over the whole schema."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, settings

from app import auth
from app.auth import Scope, find_scopes
from app.settings import Settings
from bench.service import serve_log, serving
from streams.connection import connect
from streams.keys import StreamKeys
from tests import services
from tests.services import write_snapshot
from tests.test_contract import SCHEMA_CHECKS

pytestmark = pytest.mark.reliability

KEYS = {
    "admin": "abuse-admin-7f3c9e1d2b",
    "predict": "abuse-predict-4a8b6c2e0f",
    "feedback": "abuse-feedback-1d5e9a3c7b",
}
JSON = {"content-type": "application/json"}
# Generated requests by response status, reported when the replica stops.
FUZZ: dict[str, int] = {}
TEXT = {"content-type": "text/plain"}
XML = {"content-type": "application/xml"}
FORM = {"content-type": "application/x-www-form-urlencoded"}


@dataclass
class Replica:
    base: str
    data_dir: Path
    client: redis.Redis
    keys: StreamKeys
    snapshot_id: str

    def call(
        self, method: str, path: str, key: str | None = KEYS["admin"], **kwargs: object
    ) -> httpx.Response:
        return services.call(self.base, method, path, key, timeout=60, **kwargs)

    def written(self) -> dict[str, object]:
        """What a request could have written: every key, the stream, the counters, control and probes.

        Left out: the per-key request counts of the rate limit, which every request adds to, malformed or
        not, so that a flood of junk is limited too."""
        return {
            "keys": sorted(key for key in self.client.scan_iter("*") if b":rate:" not in key),
            "stream": self.client.xlen(self.keys.feedback),
            "counters": self.client.hgetall(self.keys.counters),
            "control": self.client.hgetall(self.keys.control),
            "probes": self.client.hgetall(self.keys.probes),
        }

    def healthy(self) -> bool:
        predicted = self.call("POST", "/v1/predict", json={"inputs": ["the match ended"]})
        return self.call("GET", "/healthz").status_code == 200 and predicted.status_code == 200


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Replica]:
    data_dir = tmp_path_factory.mktemp("abuse")
    snapshot_id = write_snapshot(Settings(model=str(tiny_model_dir), data_dir=data_dir))
    keys = ";".join(f"{key}:{scope}" for scope, key in KEYS.items())
    with serving(data_dir, "--no-learner", model=tiny_model_dir, api_keys=keys) as (base, _):
        client = connect("", data_dir)
        yield Replica(base, data_dir, client, StreamKeys(), snapshot_id)
        client.close()
    if FUZZ:
        by_status = json.dumps(FUZZ, sort_keys=True)
        print(f"\nschemathesis cases by status: {by_status}, {sum(FUZZ.values())} in all")


def nested(depth: int) -> bytes:
    return b'{"inputs": ' + b"[" * depth + b"]" * depth + b"}"


def chunks(total: int) -> Iterator[bytes]:
    yield b'{"examples": [{"text": "'
    for _ in range(total // 65536):
        yield b"x" * 65536
    yield b'", "label": "huge"}]}'


FEEDBACK, PREDICT = "/v1/feedback", "/v1/predict"
TEXT_1E5 = "x" * 100_000
# (what, method, path, request arguments, status, error code, words the message must hold)
HOSTILE = [
    ("16 MiB streamed body", "POST", FEEDBACK, {"content": chunks(16 << 20), "headers": JSON}, 413,
     "body_too_large", "RETENTIVE_MAX_BODY_BYTES"),
    ("JSON nested 100,000 deep", "POST", PREDICT, {"content": nested(100_000), "headers": JSON}, 422,
     "invalid_request", "nested"),
    ("JSON nested 900 deep", "POST", PREDICT, {"content": nested(900), "headers": JSON}, 422,
     "invalid_request", "inputs[0]"),
    ("a number of 5,000 digits", "POST", PREDICT,
     {"content": b'{"inputs": ["a"], "top_k": ' + b"9" * 5000 + b"}", "headers": JSON}, 422,
     "invalid_request", "digits"),
    ("100k-character text to predict", "POST", PREDICT, {"json": {"inputs": [TEXT_1E5]}}, 422,
     "invalid_request", "inputs[0]: at most 10000 characters"),
    ("100k-character text as feedback", "POST", FEEDBACK,
     {"json": {"examples": [{"text": TEXT_1E5, "label": "a"}]}}, 422, "invalid_request",
     "examples[0].text: at most 10000 characters"),
    ("invalid UTF-8", "POST", FEEDBACK,
     {"content": b'{"examples": [{"text": "\xff\xfe", "label": "a"}]}', "headers": JSON}, 422,
     "invalid_request", "UTF-8"),
    ("a lone surrogate to predict", "POST", PREDICT,
     {"content": b'{"inputs": ["ok", "bad \\ud800"]}', "headers": JSON}, 422, "invalid_request",
     "inputs[1]: not valid Unicode"),
    ("a lone surrogate as feedback", "POST", FEEDBACK,
     {"content": b'{"examples": [{"text": "bad \\udfff", "label": "a"}]}', "headers": JSON}, 422,
     "invalid_request", "examples[0].text: not valid Unicode"),
    ("NUL in a text to predict", "POST", PREDICT, {"json": {"inputs": ["a\x00b"]}}, 422, "invalid_request",
     "inputs[0]: remove the NUL character at position 1"),
    ("NUL in a feedback text", "POST", FEEDBACK, {"json": {"examples": [{"text": "a\x00", "label": "a"}]}},
     422, "invalid_request", "examples[0].text: remove the NUL character"),
    ("terminal escape in a text", "POST", FEEDBACK,
     {"json": {"examples": [{"text": "red \x1b[31m alert", "label": "a"}]}}, 422, "invalid_request",
     "control character U+001B at position 4"),
    ("bell in a text to predict", "POST", PREDICT, {"json": {"inputs": ["ding\x07"]}}, 422,
     "invalid_request", "control character U+0007"),
    ("Redis protocol in a label", "POST", FEEDBACK,
     {"json": {"examples": [{"text": "fine", "label": "x\r\nFLUSHALL\r\n"}]}}, 422, "invalid_request",
     "examples[0].label: remove the control character U+000D"),
    ("10,000 distinct labels", "POST", FEEDBACK,
     {"json": {"examples": [{"text": f"text {i}", "label": f"label-{i}"} for i in range(10_000)]}}, 422,
     "invalid_request", "RETENTIVE_MAX_EXAMPLES"),
    ("top_k -1", "POST", PREDICT, {"json": {"inputs": ["a"], "top_k": -1}}, 422, "invalid_request",
     "top_k: Input should be greater than or equal to 1"),
    ("top_k 10^30", "POST", PREDICT, {"json": {"inputs": ["a"], "top_k": 10**30}}, 422, "invalid_request",
     "top_k: Input should be less than or equal to 100"),
    ("top_k 1e400", "POST", PREDICT, {"content": b'{"inputs": ["a"], "top_k": 1e400}', "headers": JSON},
     422, "invalid_request", "top_k: Input should be a finite number"),
    ("a JSON array body", "POST", PREDICT, {"json": [1, 2]}, 422, "invalid_request", "body"),
    ("text/plain", "POST", FEEDBACK, {"content": b'{"examples": []}', "headers": TEXT},
     415, "unsupported_media_type", "Content-Type: application/json"),
    ("a form", "POST", PREDICT, {"data": {"inputs": "a"}}, 415, "unsupported_media_type", "JSON"),
    ("multipart", "POST", PREDICT, {"files": {"inputs": ("a.txt", b"a")}}, 415, "unsupported_media_type",
     "JSON"),
    ("XML", "POST", PREDICT, {"content": b"<inputs>a</inputs>", "headers": XML},
     415, "unsupported_media_type", "JSON"),
    ("no content type", "POST", PREDICT, {"content": b'{"inputs": ["a"]}'}, 415, "unsupported_media_type",
     "JSON"),
    ("a probe of bad JSON type", "PUT", "/v1/probes/typed", {"content": b"a=b", "headers": FORM}, 415,
     "unsupported_media_type", "JSON"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "request_args", "status", "code", "says"),
    [case[1:] for case in HOSTILE],
    ids=[case[0] for case in HOSTILE],
)
def test_hostile_input_gets_a_clear_4xx_and_writes_nothing(
    replica: Replica, method: str, path: str, request_args: dict, status: int, code: str, says: str
) -> None:
    before = replica.written()
    response = replica.call(method, path, **request_args)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert error["code"] == code and says in error["message"], error
    assert replica.written() == before
    assert replica.healthy()


HOSTILE_NAMES = ["rt:{default}:feedback", "*", "..", ".", "a b", "x" * 65, "caf\u00e9", "a\x00b", "%2e%2e"]
HOSTILE_SNAPSHOT_IDS = [
    "..",
    "...",
    "00000001-aaaaaaaaaaaa.",
    "\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668-aaaaaaaaaaaa",  # Arabic-Indic digits
    "00000001-AAAAAAAAAAAA",
    "00000001-aaaaaaaaaaaa%00",
    "rt:{default}:control",
    "1" * 5000 + "-aaaaaaaaaaaa",
]


def segment(value: str) -> str:
    """`value` as one path segment, dots included, so that no client-side normalisation removes it."""
    return quote(value, safe="").replace(".", "%2E")


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=repr)
def test_a_hostile_probe_name_is_refused_and_stored_nowhere(replica: Replica, name: str) -> None:
    before = replica.written()
    path = f"/v1/probes/{segment(name)}"
    probe = {"examples": [{"text": "a probe text", "label": "news"}]}
    refused = replica.call("PUT", path, json=probe)
    assert refused.status_code in (404, 422), refused.text
    assert replica.call("DELETE", path).status_code in (404, 422)
    assert replica.written() == before
    assert name not in [p["name"] for p in replica.call("GET", "/v1/probes").json()]


@pytest.mark.parametrize("snapshot_id", HOSTILE_SNAPSHOT_IDS, ids=lambda s: repr(s[:30]))
def test_a_hostile_snapshot_id_is_never_looked_up(replica: Replica, snapshot_id: str) -> None:
    before = replica.written()
    refused = replica.call("POST", f"/v1/snapshots/{segment(snapshot_id)}/rollback")
    assert refused.status_code == 404, refused.text
    assert "is not a snapshot id" in refused.json()["error"]["message"]
    assert replica.written() == before


def test_labels_and_ids_that_look_like_keys_or_paths_stay_data(replica: Replica) -> None:
    """They are valid feedback (labels such as "Sci/Tech" are real); they are stored as values only."""
    hostile = ["rt:{default}:feedback", "../../etc/passwd", "/tmp/x", "*", "{default}", "C:\\Win", "%2e%2e"]
    examples = [
        {"text": f"example {i}", "label": value, "id": f"../{i}:{value.replace(' ', '')}"}
        for i, value in enumerate(hostile)
    ]
    keys_before = set(replica.client.scan_iter("*"))
    files_before = {path.relative_to(replica.data_dir) for path in replica.data_dir.rglob("*")}
    accepted = replica.call("POST", FEEDBACK, json={"examples": examples})
    assert accepted.status_code == 202, accepted.text
    stored = {entry[1][b"label"].decode() for entry in replica.client.xrange(replica.keys.feedback)}
    assert set(hostile) <= stored
    new_keys = set(replica.client.scan_iter("*")) - keys_before
    # The model's own fixed keys, the request's count in its rate-limit minute (new when the minute is), and
    # one dedup key per id, each named by a hash; nothing else.
    fixed = {name.encode() for name in (replica.keys.feedback, replica.keys.backlog, replica.keys.counters)}
    counted = {key for key in new_keys if re.fullmatch(rb"rt:\{default\}:rate:\w+:[0-9a-f]{32}:\d+", key)}
    dedup = new_keys - fixed - counted
    assert len(dedup) == len(examples)
    assert all(re.fullmatch(rb"rt:\{default\}:dedup:[0-9a-f]{32}", key) for key in dedup)
    files_after = {path.relative_to(replica.data_dir) for path in replica.data_dir.rglob("*")}
    assert not {str(path) for path in files_after - files_before} & set(hostile)
    assert all("passwd" not in str(path) and "Win" not in str(path) for path in files_after)


def test_keys_never_appear_in_responses_or_logs(replica: Replica) -> None:
    wrong = [KEYS["admin"] + "x", KEYS["admin"][:-1], KEYS["predict"].upper(), "Bearer " + KEYS["admin"]]
    bodies = []
    for key in [*wrong, KEYS["predict"], KEYS["feedback"]]:
        for method, path, body in [
            ("POST", PREDICT, {"inputs": ["a"]}),
            ("POST", FEEDBACK, {"examples": [{"text": "t", "label": "x" * 500}]}),
            ("POST", "/v1/learner/pause", None),
            ("GET", "/v1/model", None),
        ]:
            bodies.append(replica.call(method, path, key=key, json=body).text)
    bodies += [replica.call("GET", path).text for path in ("/metrics", "/openapi.json", "/v1/model")]
    log = serve_log(replica.data_dir).read_text()
    assert "POST /v1/predict" in log  # the access log is on, so the check below means something
    for key in KEYS.values():
        assert not [body for body in bodies if key in body]
        assert key not in log


def test_every_key_is_compared_whichever_matches(monkeypatch: pytest.MonkeyPatch) -> None:
    """Constant time in the code path: each lookup compares against every key, always as equal-length
    digests, whether the first key, the last or none matches."""
    keys = {f"key-{i}-{'k' * i}": frozenset({Scope.PREDICT}) for i in range(6)}
    compared: list[tuple[int, int]] = []
    real = auth.hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for presented in [*keys, "", "key-0", "x" * 10_000, "key-5-kkkkk-and-more"]:
        compared.clear()
        found = find_scopes(keys, presented)
        assert (found is not None) == (presented in keys)
        assert len(compared) == len(keys)
        assert set(compared) == {(32, 32)}


fuzzed = schemathesis.pytest.from_fixture("fuzz_schema")


@pytest.fixture(scope="module")
def fuzz_schema(replica: Replica) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{replica.base}/openapi.json")


@pytest.mark.long
@fuzzed.parametrize()
@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
def test_thousands_of_generated_requests(replica: Replica, case: schemathesis.Case) -> None:
    """Whole schema, valid and invalid requests: never a 5xx or an undocumented answer, and a refused
    request never adds to the stream."""
    before = replica.client.xlen(replica.keys.feedback)
    response = case.call_and_validate(
        headers={"Authorization": f"Bearer {KEYS['admin']}"}, checks=SCHEMA_CHECKS, timeout=60
    )
    FUZZ[str(response.status_code)] = FUZZ.get(str(response.status_code), 0) + 1
    if response.status_code >= 400:
        assert replica.client.xlen(replica.keys.feedback) == before
    if case.path.startswith("/v1/learner/"):
        replica.call("POST", "/v1/learner/resume")


def test_still_healthy_after_all_of_it(replica: Replica) -> None:
    assert replica.healthy()
    assert replica.call("GET", "/readyz").json()["status"] == "ready"
