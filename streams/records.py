"""The wire schema of one feedback record: what the producer writes with XADD and what the learner reads back.

A stream entry holds the fields `v` (schema version), `text`, `label`, `received_at` (unix seconds) and, when
set, `id`, `slice` and `prediction_id`. Every value is UTF-8 text.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass

SCHEMA_VERSION = "1"

_OPTIONAL = ("id", "slice", "prediction_id")
# A lone surrogate cannot be encoded as UTF-8, so it would fail at XADD time after validation passed.
_SURROGATE = re.compile("[\ud800-\udfff]")
# C0 and C1 control characters other than tab, newline and carriage return.
_TEXT_CONTROL = re.compile("[\x01-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# NEXT LINE, LINE SEPARATOR and PARAGRAPH SEPARATOR: line breaks in Unicode, and common in real corpora.
_LINE_BREAKS = str.maketrans({"\x85": "\n", "\u2028": "\n", "\u2029": "\n"})


def normalize_text(text: str) -> str:
    """`text` with Unicode's other line breaks written as newlines, which every tokenizer reads alike."""
    return text.translate(_LINE_BREAKS) if isinstance(text, str) else text


def normalize_label(label: str) -> str:
    """`label` in Unicode NFC, so that two labels that look the same (a composed or decomposed accent) are
    the same class."""
    return unicodedata.normalize("NFC", label) if isinstance(label, str) else label


@dataclass(frozen=True)
class RecordLimits:
    """Longest accepted value of each field, in characters."""

    max_text_chars: int = 10_000
    max_label_chars: int = 100
    max_id_chars: int = 128
    max_slice_chars: int = 64


DEFAULT_LIMITS = RecordLimits()


class MalformedRecord(ValueError):  # noqa: N818 - public API name
    """A record that breaks the schema. `field` names the field at fault (None when no single one is),
    `reason` says what to fix, and `index` is the record's position in its request when known."""

    def __init__(self, field: str | None, reason: str, *, index: int | None = None) -> None:
        self.field = field
        self.reason = reason
        self.index = index
        at = f"record {index}: " if index is not None else ""
        where = f"{field}: " if field else ""
        super().__init__(f"{at}{where}{reason}")

    def at(self, index: int) -> MalformedRecord:
        """The same error, placed at position `index` of a request."""
        return MalformedRecord(self.field, self.reason, index=index)


@dataclass(frozen=True)
class FeedbackRecord:
    """One labelled example sent as feedback. `received_at` is unix seconds; 0 means the producer sets it."""

    text: str
    label: str
    id: str | None = None
    slice: str | None = None
    prediction_id: str | None = None
    received_at: float = 0.0

    def __post_init__(self) -> None:
        # Frozen: the normalised values replace what was given, once, wherever a record is made.
        object.__setattr__(self, "text", normalize_text(self.text))
        object.__setattr__(self, "label", normalize_label(self.label))

    def validate(self, limits: RecordLimits = DEFAULT_LIMITS) -> None:
        """Raise MalformedRecord naming the first field that breaks the schema."""
        _check_text(self.text, limits.max_text_chars)
        _check_label(self.label, limits.max_label_chars)
        for name, most in (
            ("id", limits.max_id_chars),
            ("slice", limits.max_slice_chars),
            ("prediction_id", limits.max_id_chars),
        ):
            value = getattr(self, name)
            if value is not None:
                _check_token(name, value, most)
        _check_received_at(self.received_at)

    def to_fields(self) -> dict[str, str]:
        """The stream entry's fields; optional fields that are None are left out."""
        fields = {"v": SCHEMA_VERSION, "text": self.text, "label": self.label}
        for name in _OPTIONAL:
            value = getattr(self, name)
            if value is not None:
                fields[name] = value
        # repr of a float is the shortest text that reads back to the same float.
        fields["received_at"] = repr(float(self.received_at))
        return fields

    @classmethod
    def from_fields(
        cls,
        fields: Mapping[bytes | str, bytes | str],
        limits: RecordLimits = DEFAULT_LIMITS,
    ) -> FeedbackRecord:
        """Decode and validate a stream entry's fields; fields outside the schema are ignored."""
        decoded: dict[str, bytes | str] = {}
        for key, value in fields.items():
            decoded[_decode(None, key)] = value
        version = _field(decoded, "v")
        if version is None:
            raise MalformedRecord("v", f"missing schema version; this reader understands {SCHEMA_VERSION!r}")
        if version != SCHEMA_VERSION:
            raise MalformedRecord(
                "v", f"unknown schema version {version!r}; this reader understands {SCHEMA_VERSION!r}"
            )
        text = _required(decoded, "text")
        label = _required(decoded, "label")
        received = _field(decoded, "received_at")
        try:
            received_at = float(received) if received is not None else 0.0
        except ValueError:
            raise MalformedRecord(
                "received_at", f"must be a number of unix seconds (got {received!r})"
            ) from None
        record = cls(
            text=text,
            label=label,
            id=_field(decoded, "id"),
            slice=_field(decoded, "slice"),
            prediction_id=_field(decoded, "prediction_id"),
            received_at=received_at,
        )
        record.validate(limits)
        return record


def _decode(field: str | None, value: bytes | str) -> str:
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as err:
        what = "value" if field else "field name"
        raise MalformedRecord(
            field, f"{what} is not valid UTF-8 (byte 0x{value[err.start]:02x} at offset {err.start})"
        ) from None


def _field(fields: Mapping[str, bytes | str], name: str) -> str | None:
    value = fields.get(name)
    return None if value is None else _decode(name, value)


def _required(fields: Mapping[str, bytes | str], name: str) -> str:
    value = _field(fields, name)
    if value is None:
        raise MalformedRecord(name, "missing; every record needs a text and a label")
    return value


def _check_type(field: str, value: object) -> None:
    if not isinstance(value, str):
        raise MalformedRecord(field, f"must be a string (got {type(value).__name__})")


def _check_length(field: str, value: str, most: int) -> None:
    if len(value) > most:
        raise MalformedRecord(field, f"at most {most} characters (got {len(value)})")


def _check_text(text: str, most: int) -> None:
    _check_type("text", text)
    if not text.strip():
        raise MalformedRecord("text", "must not be empty or only whitespace")
    _check_length("text", text, most)
    problem = text_characters_problem(text)
    if problem:
        raise MalformedRecord("text", problem)


def text_characters_problem(text: str) -> str | None:
    """What makes `text` unusable as a text to learn from or classify, or None: a NUL or another control
    character (tab, newline and carriage return are fine), or a lone surrogate (not encodable as UTF-8)."""
    nul = text.find("\x00")
    if nul >= 0:
        return f"remove the NUL character at position {nul}"
    control = _TEXT_CONTROL.search(text)
    if control:
        return f"remove the control character U+{ord(control.group()):04X} at position {control.start()}"
    surrogate = _SURROGATE.search(text)
    if surrogate:
        return f"not valid Unicode (lone surrogate at position {surrogate.start()})"
    return None


def _check_label(label: str, most: int) -> None:
    _check_type("label", label)
    if not label:
        raise MalformedRecord("label", "must not be empty")
    _check_length("label", label, most)
    for position, char in enumerate(label):
        category = unicodedata.category(char)
        if category == "Cc":
            raise MalformedRecord(
                "label", f"remove the control character U+{ord(char):04X} at position {position}"
            )
        if category == "Cs":
            raise MalformedRecord("label", f"not valid Unicode (lone surrogate at position {position})")
        if category == "Cf":
            raise MalformedRecord(
                "label",
                f"remove the invisible format character U+{ord(char):04X} at position {position} "
                "(a bidi control or zero-width character makes a label look like another)",
            )
    if not label.strip():
        raise MalformedRecord("label", "must not be only whitespace")


def _check_token(field: str, value: str, most: int) -> None:
    _check_type(field, value)
    if not value:
        raise MalformedRecord(field, "must not be empty; leave it out instead")
    _check_length(field, value, most)
    for position, char in enumerate(value):
        if char.isspace():
            raise MalformedRecord(field, f"no whitespace allowed (U+{ord(char):04X} at position {position})")
        if not char.isprintable():
            raise MalformedRecord(
                field, f"printable characters only (U+{ord(char):04X} at position {position})"
            )


def _check_received_at(value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MalformedRecord("received_at", f"must be a number of unix seconds (got {type(value).__name__})")
    if not math.isfinite(value) or value < 0:
        raise MalformedRecord("received_at", f"must be finite unix seconds, 0 or more (got {value!r})")
