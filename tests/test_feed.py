"""`retentive feed` as a user runs it: a real `retentive serve --no-learner` over HTTP, and a real Redis."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
from typer.testing import CliRunner, Result

from app.cli import cli
from app.client.feed import FeedSummary, Refusal, RetryPolicy, Sender, TargetBusyError, feed
from bench.service import free_port, serving
from streams.connection import connect
from streams.keys import StreamKeys
from streams.records import FeedbackRecord
from tests.conftest import TEST_REDIS_URL, RedisTarget

FEED_KEY, PREDICT_KEY = "feed-key-1", "predict-key-1"
# Small enough for a test to fill the backlog (no learner drains it) or pass the request limits.
MAX_BACKLOG, MAX_EXAMPLES, SERVER_LABEL_CHARS = 12, 6, 20

MIXED = [
    '{"text": "the telescope saw a comet", "label": "astronomy", "id": "a-1"}',
    '{"text": "stir the butter into the pan", "label": "cooking", "id": "c-1", "slice": "kitchen"}',
    "",
    '{"text": "the striker scored", "label": "football"',
    '{"text": "a goal in the last minute", "id": "f-2"}',
    '{"text": "stir the butter into the pan", "label": "cooking", "id": "c-1"}',
    '{"text": "bake the bread", "label": "cooking", "colour": "brown"}',
    '{"text": "the planet moved across the sky", "label": "astronomy", "id": "a-2"}',
]


@dataclass(frozen=True)
class Service:
    url: str
    port: int
    keys: StreamKeys
    client: redis.Redis


@pytest.fixture(scope="module")
def running_service(tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("feed-service")
    prefix = f"rt-feed-{uuid.uuid4().hex[:12]}"
    with serving(
        data_dir,
        "--no-learner",
        model=tiny_model_dir,
        redis_url=TEST_REDIS_URL,
        key_prefix=prefix,
        api_keys=f"{FEED_KEY}:feedback;{PREDICT_KEY}:predict",
        max_backlog=MAX_BACKLOG,
        max_examples=MAX_EXAMPLES,
        max_label_chars=SERVER_LABEL_CHARS,
    ) as (base, _):
        client = connect(TEST_REDIS_URL, data_dir)
        try:
            yield Service(base, int(base.rsplit(":", 1)[1]), StreamKeys(prefix, "default"), client)
        finally:
            delete_keys(client, prefix)
            client.close()


@pytest.fixture
def service(running_service: Service) -> Iterator[Service]:
    """The shared service, with its stream emptied after each test."""
    yield running_service
    delete_keys(running_service.client, running_service.keys.prefix)


def delete_keys(client: redis.Redis, prefix: str) -> None:
    for key in client.scan_iter(match=f"{prefix}:*", count=500):
        client.delete(key)


def jsonl(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / f"feedback-{uuid.uuid4().hex[:8]}.jsonl"
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def examples(count: int, start: int = 0) -> list[str]:
    return [
        json.dumps({"text": f"example text number {i}", "label": f"label-{i % 3}", "id": f"ex-{i}"})
        for i in range(start, start + count)
    ]


def entries(client: redis.Redis, keys: StreamKeys) -> list[dict[str, str]]:
    """The stream's entries in order, without the fields the producer adds."""
    return [
        {
            name.decode(): value.decode()
            for name, value in fields.items()
            if name not in (b"v", b"received_at")
        }
        for _, fields in client.xrange(keys.feedback)
    ]


def invoke(*args: str, env: dict[str, str | None] | None = None, stdin: bytes | None = None) -> Result:
    """The command in this process: quicker than a new one, which spends seconds importing torch."""
    return CliRunner().invoke(
        cli, ["feed", *args], env={"RETENTIVE_API_KEY": None, **(env or {})}, input=stdin
    )


def test_bad_lines_are_refused_alone_and_the_rest_is_added_once(service: Service, tmp_path: Path) -> None:
    path = jsonl(tmp_path, MIXED)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "RETENTIVE_PORT": str(service.port),
        "RETENTIVE_API_KEY": FEED_KEY,
    }
    env.pop("REDIS_URL", None)
    result = subprocess.run(
        ["retentive", "feed", str(path), "--batch", "2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stdout.splitlines() == [
        "accepted 3, duplicates 1, refused 3",
        "line 4: not valid JSON: Expecting ',' delimiter at column 51",
        "line 5: label: missing; every line needs a text and a label",
        "line 7: colour: unknown field; the fields are text, label, id, slice, prediction_id",
    ]
    assert entries(service.client, service.keys) == [
        {"text": "the telescope saw a comet", "label": "astronomy", "id": "a-1"},
        {"text": "stir the butter into the pan", "label": "cooking", "id": "c-1", "slice": "kitchen"},
        {"text": "the planet moved across the sky", "label": "astronomy", "id": "a-2"},
    ]


def test_the_same_file_again_adds_only_duplicates(service: Service, tmp_path: Path) -> None:
    path = jsonl(tmp_path, examples(5))
    first = invoke(str(path), "--url", service.url, "--api-key", FEED_KEY)
    again = invoke(str(path), "--url", service.url, "--api-key", FEED_KEY)
    assert (first.exit_code, first.stdout) == (0, "accepted 5, duplicates 0, refused 0\n")
    assert (again.exit_code, again.stdout) == (0, "accepted 0, duplicates 5, refused 0\n")
    assert service.client.xlen(service.keys.feedback) == 5


@pytest.mark.parametrize(
    ("key", "says"),
    [(PREDICT_KEY, "the API key lacks the 'feedback' scope"), (None, "the service needs an API key")],
)
def test_without_the_feedback_scope_nothing_is_sent(
    service: Service, tmp_path: Path, key: str | None, says: str
) -> None:
    result = invoke(str(jsonl(tmp_path, examples(3))), "--url", service.url, env={"RETENTIVE_API_KEY": key})
    assert result.exit_code == 2
    assert result.stdout == "accepted 0, duplicates 0, refused 0\n"
    assert result.stderr.startswith(f"error: {says}")
    assert "nothing from line 1 on was sent" in result.stderr
    assert service.client.xlen(service.keys.feedback) == 0


def test_the_key_can_come_from_a_file_kept_out_of_the_process_list(service: Service, tmp_path: Path) -> None:
    key_file = tmp_path / "feed.key"
    key_file.write_text(f"# the feeding job's key\n{FEED_KEY}\n")
    result = invoke(str(jsonl(tmp_path, examples(2))), "--url", service.url, "--api-key-file", str(key_file))
    assert (result.exit_code, result.stdout) == (0, "accepted 2, duplicates 0, refused 0\n")
    key_file.write_text("# none yet\n")
    empty = invoke(str(jsonl(tmp_path, examples(2))), "--url", service.url, "--api-key-file", str(key_file))
    assert empty.exit_code == 2 and "holds no key" in empty.stderr


def test_truncate_cuts_a_long_text_to_the_limit_instead_of_refusing_its_line(
    service: Service, tmp_path: Path
) -> None:
    review = json.dumps({"text": "a long review " * 800, "label": "long", "id": "long-1"})
    path = jsonl(tmp_path, [review, *examples(1)])
    refused = invoke(str(path), "--url", service.url, "--api-key", FEED_KEY)
    assert refused.exit_code == 1 and "line 1: text: at most 10000 characters (got 11200)" in refused.stdout
    cut = invoke(str(path), "--url", service.url, "--api-key", FEED_KEY, "--truncate")
    assert (cut.exit_code, cut.stdout) == (0, "accepted 1, duplicates 1, refused 0, truncated 1\n")
    stored = [e for e in entries(service.client, service.keys) if e.get("id") == "long-1"]
    assert [len(e["text"]) for e in stored] == [10_000]


def test_json_summary_from_stdin(service: Service) -> None:
    lines = [*examples(2), '{"text": "no label here", "label": ""}', '["not", "an", "object"]']
    result = invoke(
        "-", "--json", "--url", service.url, "--api-key", FEED_KEY, stdin="\n".join(lines).encode()
    )
    assert result.exit_code == 1
    assert json.loads(result.stdout) == {
        "accepted": 2,
        "duplicates": 0,
        "refused": [
            {"line": 3, "reason": "label: must not be empty"},
            {"line": 4, "reason": "must be a JSON object (got array)"},
        ],
        "truncated": 0,
        "stopped": None,
    }


def test_a_line_the_service_refuses_is_refused_alone(service: Service, tmp_path: Path) -> None:
    long_label = "x" * (SERVER_LABEL_CHARS + 1)
    lines = [*examples(1), json.dumps({"text": "a long label", "label": long_label}), *examples(1, start=1)]
    result = invoke(str(jsonl(tmp_path, lines)), "--url", service.url, "--api-key", FEED_KEY)
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [
        "accepted 2, duplicates 0, refused 1",
        f"line 2: refused by the service: label: at most {SERVER_LABEL_CHARS} characters "
        f"(got {SERVER_LABEL_CHARS + 1})",
    ]
    assert [entry["id"] for entry in entries(service.client, service.keys)] == ["ex-0", "ex-1"]


def test_a_batch_over_the_service_limit_is_sent_in_parts(service: Service, tmp_path: Path) -> None:
    path = jsonl(tmp_path, examples(MAX_EXAMPLES + 3))
    result = invoke(str(path), "--batch", str(MAX_EXAMPLES + 3), "--url", service.url, "--api-key", FEED_KEY)
    assert (result.exit_code, result.stdout) == (0, f"accepted {MAX_EXAMPLES + 3}, duplicates 0, refused 0\n")
    ids = [entry["id"] for entry in entries(service.client, service.keys)]
    assert ids == [f"ex-{i}" for i in range(MAX_EXAMPLES + 3)]


def test_a_full_backlog_stops_and_a_rerun_sends_the_rest(service: Service, tmp_path: Path) -> None:
    path = jsonl(tmp_path, examples(MAX_BACKLOG + 2))
    args = (str(path), "--batch", "4", "--url", service.url, "--api-key", FEED_KEY)
    stopped = invoke(*args, "--max-wait", "0")
    assert stopped.exit_code == 2
    assert stopped.stdout == f"accepted {MAX_BACKLOG}, duplicates 0, refused 0\n"
    assert stopped.stderr.startswith("error: the feedback backlog is full")
    assert f"nothing from line {MAX_BACKLOG + 1} on was sent" in stopped.stderr
    service.client.set(service.keys.backlog, 0)  # as if a learner had caught up
    rerun = invoke(*args, "--max-wait", "0")
    assert (rerun.exit_code, rerun.stdout) == (0, f"accepted 2, duplicates {MAX_BACKLOG}, refused 0\n")
    assert service.client.xlen(service.keys.feedback) == MAX_BACKLOG + 2


def test_an_unreachable_url_is_named(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = invoke(str(jsonl(tmp_path, examples(2))), "--url", url)
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot reach {url}/v1/feedback: ")


def test_a_missing_file_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(str(tmp_path / "absent.jsonl"), "--url", "http://127.0.0.1:9")
    assert (result.exit_code, result.stderr) == (
        2,
        f"error: {tmp_path / 'absent.jsonl'}: No such file or directory\n",
    )


def test_direct_adds_to_the_stream(
    redis_target: RedisTarget, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    path = jsonl(tmp_path, [*examples(3), '{"text": "x", "label": "y", "id": "has space"}'])
    args = (str(path), "--direct", "--data-dir", str(redis_target.data_dir), "--redis-url", redis_target.url)
    env = {"RETENTIVE_KEY_PREFIX": key_prefix}
    first = invoke(*args, env=env)
    again = invoke(*args, env=env)
    assert first.exit_code == 1
    assert first.stdout.splitlines() == [
        "accepted 3, duplicates 0, refused 1",
        "line 4: id: no whitespace allowed (U+0020 at position 3)",
    ]
    assert again.stdout.splitlines()[0] == "accepted 0, duplicates 3, refused 1"
    keys = StreamKeys(key_prefix, "default")
    assert [entry["id"] for entry in entries(redis_client, keys)] == ["ex-0", "ex-1", "ex-2"]


def test_direct_stops_when_the_backlog_stays_full(
    redis_target: RedisTarget, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    path = jsonl(tmp_path, examples(5))
    result = invoke(
        str(path),
        *("--direct", "--batch", "2", "--max-wait", "0"),
        *("--data-dir", str(redis_target.data_dir), "--redis-url", redis_target.url),
        env={"RETENTIVE_KEY_PREFIX": key_prefix, "RETENTIVE_MAX_BACKLOG": "3"},
    )
    assert result.exit_code == 2
    assert result.stdout == "accepted 2, duplicates 0, refused 0\n"
    assert result.stderr.startswith(
        "error: the feedback backlog is full (feedback backlog is 2 of 3 entries;"
    )
    assert "nothing from line 3 on was sent" in result.stderr
    assert redis_client.xlen(StreamKeys(key_prefix, "default").feedback) == 2


def busy_then_ready(busy_times: int, after_s: float) -> tuple[list[int], Sender]:
    """A sender that is busy `busy_times` times, then accepts; it records the size of each batch it took."""
    taken: list[int] = []
    calls = iter(range(busy_times + 1_000))

    def send(records: Sequence[FeedbackRecord]) -> tuple[int, int]:
        if next(calls) < busy_times:
            raise TargetBusyError("the feedback backlog is full", after_s)
        taken.append(len(records))
        return len(records), 0

    return taken, send


def test_a_busy_target_is_retried_after_the_wait_it_asks_for() -> None:
    taken, send = busy_then_ready(busy_times=2, after_s=3)
    waits: list[float] = []
    summary = feed(examples_bytes(3), send, retry=RetryPolicy(max_wait_s=10), sleep=waits.append)
    assert (summary, waits, taken) == (FeedSummary(accepted=3), [3, 3], [3])


def test_a_target_busy_past_the_longest_wait_stops_feeding() -> None:
    taken, send = busy_then_ready(busy_times=5, after_s=3)
    waits: list[float] = []
    summary = feed(examples_bytes(3), send, batch_size=2, retry=RetryPolicy(max_wait_s=7), sleep=waits.append)
    assert waits == [3, 3]
    assert taken == []
    assert summary.exit_code == 2
    assert summary.stopped == (
        "the feedback backlog is full (gave up after 3 tries and 6 s of waiting); "
        "nothing from line 1 on was sent"
    )


def test_the_report_shows_the_first_refusals_and_counts_the_rest() -> None:
    summary = FeedSummary(accepted=1, refused=[Refusal(n, "text: must not be empty") for n in range(1, 24)])
    lines = summary.report().splitlines()
    assert lines[0] == "accepted 1, duplicates 0, refused 23"
    assert lines[1:3] == ["line 1: text: must not be empty", "line 2: text: must not be empty"]
    assert len(lines) == 22
    assert lines[-1] == "... and 3 more"


def examples_bytes(count: int) -> list[bytes]:
    return [line.encode() for line in examples(count)]
