"""Feeding a JSON Lines file of labelled examples to a model.

Every line is checked here first, so a bad line is refused alone and the good ones go on, in batches, either
to the service's `POST /v1/feedback` or straight into the Redis stream. Both senders share one loop.
"""

from __future__ import annotations

import json
import re
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import httpx
import redis
from tqdm import tqdm

from app.schemas import FeedbackExample
from streams.producer import BacklogFull, FeedbackProducer
from streams.records import DEFAULT_LIMITS, FeedbackRecord, MalformedRecord, RecordLimits

FIELDS = tuple(FeedbackExample.model_fields)
REQUIRED = ("text", "label")
SHOWN_REFUSALS = 20
# What the service itself answers with Retry-After when Redis is down.
REDIS_RETRY_S = 5.0
# Where the service's 422 details point at one example, e.g. `examples[3].label`.
_EXAMPLE_FIELD = re.compile(r"^examples\[(\d+)\]\.?(.*)$")

Sender = Callable[[Sequence[FeedbackRecord]], tuple[int, int]]
"""Adds one batch all or nothing and returns (accepted, duplicates)."""


class InvalidLineError(ValueError):
    """A line that is not a valid example; the message names the field at fault when there is one."""


class TargetBusyError(Exception):
    """The batch was not taken because the target is busy; the same batch may be sent after `after_s`."""

    def __init__(self, reason: str, after_s: float) -> None:
        super().__init__(reason)
        self.reason = reason
        self.after_s = after_s


class BatchRefusedError(Exception):
    """The target refused a batch as invalid, because of its record at `index` when that is known."""

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.index = index


class BatchTooLargeError(Exception):
    """The target takes fewer examples, or fewer bytes, in one request than this batch holds."""


class FeedStoppedError(Exception):
    """Feeding cannot go on (no access, target unreachable, backlog full for too long)."""


class Progress(Protocol):
    """What the loop needs of a progress bar (a tqdm bar has it)."""

    def update(self, n: int) -> Any: ...

    def set_postfix_str(self, s: str) -> Any: ...


@dataclass(frozen=True)
class Refusal:
    """A line that was not added, and why."""

    line: int
    reason: str


@dataclass
class FeedSummary:
    """What became of a file's lines; `stopped` says why feeding ended early, if it did."""

    accepted: int = 0
    duplicates: int = 0
    refused: list[Refusal] = field(default_factory=list)
    truncated: int = 0
    stopped: str | None = None

    @property
    def exit_code(self) -> int:
        """2 when feeding stopped early, 1 when some line was refused, else 0."""
        if self.stopped:
            return 2
        return 1 if self.refused else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "duplicates": self.duplicates,
            "refused": [{"line": r.line, "reason": r.reason} for r in self.refused],
            "truncated": self.truncated,
            "stopped": self.stopped,
        }

    def report(self, shown: int = SHOWN_REFUSALS) -> str:
        """The counts, then the first `shown` refused lines."""
        counts = f"accepted {self.accepted}, duplicates {self.duplicates}, refused {len(self.refused)}"
        lines = [counts + (f", truncated {self.truncated}" if self.truncated else "")]
        lines += [f"line {r.line}: {r.reason}" for r in self.refused[:shown]]
        if len(self.refused) > shown:
            lines.append(f"... and {len(self.refused) - shown} more")
        return "\n".join(lines)


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep resending a batch the target is too busy to take."""

    max_tries: int = 10
    max_wait_s: float = 120.0


DEFAULT_RETRY = RetryPolicy()


def parse_line(
    raw: bytes, limits: RecordLimits = DEFAULT_LIMITS, truncate: bool = False
) -> tuple[FeedbackRecord, bool]:
    """The checked record on one line and whether its text was cut, or InvalidLineError saying what is
    wrong with it. With `truncate`, a text longer than the limit is cut to it (the model cuts long texts at
    its token limit anyway)."""
    try:
        text = raw.rstrip(b"\r\n").decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidLineError(
            f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at offset {err.start})"
        ) from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise InvalidLineError(f"not valid JSON: {err.msg} at column {err.colno}") from None
    if not isinstance(value, dict):
        raise InvalidLineError(f"must be a JSON object (got {_json_type(value)})")
    unknown = [name for name in value if name not in FIELDS]
    if unknown:
        raise InvalidLineError(f"{', '.join(unknown)}: unknown field; the fields are {', '.join(FIELDS)}")
    for name in REQUIRED:
        if name not in value:
            raise InvalidLineError(f"{name}: missing; every line needs a text and a label")
    for name, item in value.items():
        if not isinstance(item, str) and not (item is None and name not in REQUIRED):
            raise InvalidLineError(f"{name}: must be a string (got {_json_type(item)})")
    cut = truncate and len(value["text"]) > limits.max_text_chars
    if cut:
        value["text"] = value["text"][: limits.max_text_chars]
    record = FeedbackRecord(**value)
    try:
        record.validate(limits)
    except MalformedRecord as err:
        raise InvalidLineError(str(err)) from None
    return record, cut


def feed(
    lines: Iterable[bytes],
    send: Sender,
    *,
    batch_size: int = 100,
    limits: RecordLimits = DEFAULT_LIMITS,
    retry: RetryPolicy = DEFAULT_RETRY,
    progress: Progress | None = None,
    sleep: Callable[[float], None] = time.sleep,
    truncate: bool = False,
) -> FeedSummary:
    """Check every line against `limits`, send the good ones `batch_size` at a time, and count the outcome.

    Blank lines are skipped. A line the target refuses is counted as refused and the rest of its batch is
    sent again; a batch the target finds too large is sent in halves. Feeding stops early only when `send`
    raises FeedStoppedError or stays busy past `retry`; the summary then says why and from which line
    nothing was sent.
    """
    summary = FeedSummary()
    batch: list[tuple[int, FeedbackRecord]] = []
    counted = number = 0
    for number, raw in enumerate(lines, start=1):
        if raw.strip():
            try:
                record, cut = parse_line(raw, limits, truncate)
                summary.truncated += cut
                batch.append((number, record))
            except InvalidLineError as err:
                summary.refused.append(Refusal(number, str(err)))
        if len(batch) == batch_size:
            if not _deliver(batch, send, summary, retry, progress, sleep):
                return summary
            batch = []
            _advance(progress, number - counted)
            counted = number
    if batch and not _deliver(batch, send, summary, retry, progress, sleep):
        return summary
    _advance(progress, number - counted)
    return summary


def http_sender(client: httpx.Client, url: str, api_key: str | None) -> Sender:
    """A sender that posts each batch to `{url}/v1/feedback`, with `api_key` as a bearer token if given."""
    endpoint = f"{url.rstrip('/')}/v1/feedback"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def send(records: Sequence[FeedbackRecord]) -> tuple[int, int]:
        body = {"examples": [_example(record) for record in records]}
        try:
            response = client.post(endpoint, json=body, headers=headers)
        except httpx.TransportError as err:
            raise FeedStoppedError(f"cannot reach {endpoint}: {err or type(err).__name__}") from None
        return _counts_from(response, endpoint, has_key=bool(api_key))

    return send


def direct_sender(producer: FeedbackProducer) -> Sender:
    """A sender that adds each batch straight to the stream with `producer`."""

    def send(records: Sequence[FeedbackRecord]) -> tuple[int, int]:
        try:
            result = producer.add(records)
        except BacklogFull as err:
            raise TargetBusyError(f"the feedback backlog is full ({err})", err.retry_after_s) from None
        except MalformedRecord as err:
            reason = f"{err.field}: {err.reason}" if err.field else err.reason
            raise BatchRefusedError(reason, err.index) from None
        except redis.RedisError as err:
            raise TargetBusyError(f"Redis does not answer: {err}", REDIS_RETRY_S) from None
        return result.accepted, result.duplicates

    return send


def service_url(host: str, port: int) -> str:
    """The URL of a service bound to `host`:`port`, as a client on the same machine reaches it."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def open_input(name: str) -> tuple[AbstractContextManager[BinaryIO], int | None]:
    """The lines of file `name` (stdin for `-`) as a binary stream, and how many there are when known."""
    if name == "-":
        return nullcontext(sys.stdin.buffer), None
    path = Path(name)
    stream = path.open("rb")
    return stream, count_lines(path)


def count_lines(path: Path) -> int | None:
    """Lines in a regular file, a last line without a newline included; None for a pipe or device."""
    if not path.is_file():
        return None
    count, last = 0, b"\n"
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            count += chunk.count(b"\n")
            last = chunk[-1:]
    return count + (last != b"\n")


def progress_bar(total: int | None, quiet: bool) -> tqdm:
    """A progress bar of lines on stderr; off when `quiet` or when stderr is not a terminal."""
    return tqdm(total=total, unit=" lines", file=sys.stderr, disable=True if quiet else None)


def _deliver(
    batch: list[tuple[int, FeedbackRecord]],
    send: Sender,
    summary: FeedSummary,
    retry: RetryPolicy,
    progress: Progress | None,
    sleep: Callable[[float], None],
) -> bool:
    """Send one batch of numbered records, in file order, and count the outcome; False when feeding has to
    stop."""
    parts = [batch]
    while parts:
        part = parts.pop(0)
        try:
            accepted, duplicates = _send_with_retries(
                [record for _, record in part], send, retry, progress, sleep
            )
        except BatchRefusedError as err:
            if err.index is None or not 0 <= err.index < len(part):
                summary.refused.extend(Refusal(number, err.reason) for number, _ in part)
                continue
            summary.refused.append(Refusal(part[err.index][0], err.reason))
            rest = part[: err.index] + part[err.index + 1 :]
            parts[:0] = [rest] if rest else []
            continue
        except BatchTooLargeError as err:
            if len(part) == 1:
                summary.refused.append(Refusal(part[0][0], f"too large for one request: {err}"))
                continue
            half = len(part) // 2
            parts[:0] = [part[:half], part[half:]]
            continue
        except FeedStoppedError as err:
            summary.stopped = f"{err}; nothing from line {part[0][0]} on was sent"
            return False
        summary.accepted += accepted
        summary.duplicates += duplicates
    return True


def _send_with_retries(
    records: Sequence[FeedbackRecord],
    send: Sender,
    retry: RetryPolicy,
    progress: Progress | None,
    sleep: Callable[[float], None],
) -> tuple[int, int]:
    """`send(records)`, resent after each wait the target asks for while `retry` allows."""
    tries, waited = 1, 0.0
    while True:
        try:
            counts = send(records)
        except TargetBusyError as busy:
            if tries >= retry.max_tries or waited + busy.after_s > retry.max_wait_s:
                raise FeedStoppedError(
                    f"{busy.reason} (gave up after {tries} tries and {waited:g} s of waiting)"
                ) from None
            if progress is not None:
                progress.set_postfix_str(f"busy, retrying in {busy.after_s:g} s")
            sleep(busy.after_s)
            tries, waited = tries + 1, waited + busy.after_s
            continue
        if tries > 1 and progress is not None:
            progress.set_postfix_str("")
        return counts


def _counts_from(response: httpx.Response, endpoint: str, *, has_key: bool) -> tuple[int, int]:
    """(accepted, duplicates) from a feedback answer, or the exception that says what to do instead."""
    status = response.status_code
    if response.is_success:
        try:
            body = response.json()
            return int(body["accepted"]), int(body["duplicates"])
        except (ValueError, KeyError, TypeError):
            raise FeedStoppedError(
                f"{endpoint} answered {status} without feedback counts; is it retentive?"
            ) from None
    code, message, details = _error_of(response)
    if status == 401:
        problem = "the API key was refused" if has_key else "the service needs an API key"
        raise FeedStoppedError(
            f"{problem}: pass --api-key or set RETENTIVE_API_KEY to a key with the 'feedback' scope "
            f"({message})"
        )
    if status == 403:
        raise FeedStoppedError(f"the API key lacks the 'feedback' scope ({message})")
    if status == 413:
        raise BatchTooLargeError(message)
    if status == 422:
        raise _refusal(message, details)
    if status == 503:
        what = {"backlog_full": "the feedback backlog is full", "redis_unavailable": "Redis is down"}.get(
            code, "the service is unavailable"
        )
        raise TargetBusyError(f"{what}: {message}", _retry_after_s(response))
    raise FeedStoppedError(f"{endpoint} answered {status}: {message}")


def _error_of(response: httpx.Response) -> tuple[str | None, str, Any]:
    """The code, message and details of an error body, or the start of the raw text for another shape."""
    try:
        error = response.json()["error"]
        return error.get("code"), str(error["message"]), error.get("details")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, response.text[:200] or response.reason_phrase, None


def _refusal(message: str, details: Any) -> BatchRefusedError | BatchTooLargeError:
    """What a 422 means: too many examples, one example at fault (the first named), or the whole batch."""
    problems = [d for d in details if isinstance(d, dict)] if isinstance(details, list) else []
    for problem in problems:
        field_name = str(problem.get("field", ""))
        if field_name == "examples":
            return BatchTooLargeError(message)
        at = _EXAMPLE_FIELD.match(field_name)
        if at:
            reason = str(problem.get("message", message))
            where = f"{at[2]}: " if at[2] else ""
            return BatchRefusedError(f"refused by the service: {where}{reason}", int(at[1]))
    return BatchRefusedError(f"refused by the service: {message}")


def _retry_after_s(response: httpx.Response) -> float:
    """Seconds from Retry-After (delay seconds or an HTTP date); the service's default when absent."""
    value = response.headers.get("retry-after", "").strip()
    if value.isdigit():
        return float(value)
    try:
        return max(parsedate_to_datetime(value).timestamp() - time.time(), 0.0)
    except (TypeError, ValueError):
        return REDIS_RETRY_S


def _example(record: FeedbackRecord) -> dict[str, str]:
    return {name: getattr(record, name) for name in FIELDS if getattr(record, name) is not None}


def _json_type(value: object) -> str:
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _advance(progress: Progress | None, lines: int) -> None:
    if progress is not None and lines:
        progress.update(lines)
