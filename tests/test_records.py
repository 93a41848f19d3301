import pytest
import redis

from streams.keys import StreamKeys
from streams.records import FeedbackRecord, MalformedRecord, RecordLimits

FULL = FeedbackRecord(
    text="Ünïcødé text — 日本語 🙂\nsecond line",
    label="größe 大",
    id="req-42",
    slice="eu.west",
    prediction_id="pred_7",
    received_at=1712345678.123456,
)
VALID = {"v": "1", "text": "hello", "label": "greeting"}


def test_all_fields_round_trip_through_the_stream(redis_client: redis.Redis, key_prefix: str) -> None:
    stream = StreamKeys(prefix=key_prefix, model="m").feedback
    redis_client.xadd(stream, FULL.to_fields())
    [(_, fields)] = redis_client.xrange(stream)
    assert FeedbackRecord.from_fields(fields) == FULL


def test_optional_fields_are_left_out_and_read_back_as_none() -> None:
    record = FeedbackRecord(text="hello", label="greeting", received_at=5.0)
    fields = record.to_fields()
    assert fields == {"v": "1", "text": "hello", "label": "greeting", "received_at": "5.0"}
    assert FeedbackRecord.from_fields(fields) == record


def test_missing_received_at_reads_as_zero_and_unknown_fields_are_ignored() -> None:
    record = FeedbackRecord.from_fields({b"v": b"1", b"text": b"hi", b"label": b"x", b"trace": b"\xff"})
    assert record == FeedbackRecord(text="hi", label="x")


@pytest.mark.parametrize(
    ("fields", "field", "reason"),
    [
        ({"v": "1", "text": "hello"}, "label", "missing"),
        ({"v": "1", "label": "greeting"}, "text", "missing"),
        ({**VALID, "label": ""}, "label", "must not be empty"),
        ({**VALID, "label": "   "}, "label", "only whitespace"),
        ({**VALID, "text": ""}, "text", "must not be empty"),
        ({**VALID, "text": " \n\t "}, "text", "must not be empty"),
        ({**VALID, "text": "nul\x00here"}, "text", "NUL character at position 3"),
        ({**VALID, "text": "red \x1b[31m"}, "text", "control character U+001B at position 4"),
        ({**VALID, "text": "c1 \x86 start of selected area"}, "text", "control character U+0086"),
        ({**VALID, "text": b"bad \xff utf-8"}, "text", "not valid UTF-8"),
        ({**VALID, "label": b"\xc3"}, "label", "not valid UTF-8"),
        ({**VALID, "text": "x" * 10_001}, "text", "at most 10000 characters (got 10001)"),
        ({**VALID, "label": "x" * 250}, "label", "at most 100 characters (got 250)"),
        ({**VALID, "id": "x" * 129}, "id", "at most 128 characters (got 129)"),
        ({**VALID, "prediction_id": "x" * 129}, "prediction_id", "at most 128 characters"),
        ({**VALID, "slice": "x" * 65}, "slice", "at most 64 characters"),
        ({**VALID, "label": "tab\tbed"}, "label", "control character U+0009 at position 3"),
        ({**VALID, "label": "bell\x07"}, "label", "control character U+0007"),
        ({**VALID, "id": "has space"}, "id", "no whitespace"),
        ({**VALID, "id": ""}, "id", "must not be empty"),
        ({**VALID, "slice": "zero\u200bwidth"}, "slice", "printable characters only (U+200B"),
        ({**VALID, "prediction_id": "p\x1b"}, "prediction_id", "printable characters only"),
        ({**VALID, "v": "2"}, "v", "unknown schema version '2'"),
        ({"text": "hello", "label": "greeting"}, "v", "missing schema version"),
        ({**VALID, "received_at": "yesterday"}, "received_at", "must be a number"),
        ({**VALID, "received_at": "nan"}, "received_at", "must be finite"),
        ({**VALID, "received_at": "-1"}, "received_at", "0 or more"),
    ],
)
def test_malformed_fields_name_the_field_and_the_fix(
    fields: dict[str, str | bytes], field: str, reason: str
) -> None:
    with pytest.raises(MalformedRecord) as caught:
        FeedbackRecord.from_fields(fields)
    assert caught.value.field == field
    assert reason in caught.value.reason
    assert str(caught.value).startswith(f"{field}: ")
    assert caught.value.index is None


def test_undecodable_field_name_has_no_field() -> None:
    with pytest.raises(MalformedRecord, match="field name is not valid UTF-8") as caught:
        FeedbackRecord.from_fields({**VALID, b"\xfe": b"x"})
    assert caught.value.field is None


@pytest.mark.parametrize(
    ("record", "field"),
    [
        (FeedbackRecord(text="lone \ud800 surrogate", label="x"), "text"),
        (FeedbackRecord(text="ok", label="\udfff"), "label"),
        (FeedbackRecord(text="ok", label="x", id="\ud800"), "id"),
        (FeedbackRecord(text=None, label="x"), "text"),  # type: ignore[arg-type]
        (FeedbackRecord(text="ok", label="x", received_at=float("inf")), "received_at"),
    ],
)
def test_validate_rejects_what_cannot_be_stored(record: FeedbackRecord, field: str) -> None:
    with pytest.raises(MalformedRecord) as caught:
        record.validate()
    assert caught.value.field == field


def test_limits_are_configurable() -> None:
    record = FeedbackRecord(text="a longer text", label="long label")
    record.validate()
    limits = RecordLimits(max_text_chars=5, max_label_chars=4)
    with pytest.raises(MalformedRecord, match=r"text: at most 5 characters \(got 13\)"):
        record.validate(limits)
    with pytest.raises(MalformedRecord, match=r"label: at most 4 characters"):
        FeedbackRecord.from_fields({**VALID, "label": "long label", "text": "short"}, limits)


def test_error_placed_in_a_request_says_which_record() -> None:
    err = MalformedRecord("label", "must not be empty").at(3)
    assert (err.field, err.index, str(err)) == ("label", 3, "record 3: label: must not be empty")
    assert isinstance(err, ValueError)


def test_tabs_and_line_breaks_are_fine_in_a_text() -> None:
    FeedbackRecord(text="line one\n\tline two\r\n", label="x").validate()


@pytest.mark.parametrize("separator", ["\x85", "\u2028", "\u2029"])
def test_unicode_line_and_paragraph_separators_are_line_breaks_not_refused(separator: str) -> None:
    record = FeedbackRecord(text=f"great food{separator}slow service", label="mixed")
    record.validate()
    assert record.text == "great food\nslow service"
    with pytest.raises(MalformedRecord, match=r"control character U\+0084"):
        FeedbackRecord(text="great food\x84slow service", label="mixed").validate()


def test_labels_that_look_the_same_are_the_same() -> None:
    decomposed = FeedbackRecord(text="ok", label="cafe\u0301")
    decomposed.validate()
    assert decomposed.label == "café" == FeedbackRecord(text="ok", label="caf\u00e9").label
    fields = FeedbackRecord.from_fields({**VALID, "label": "cafe\u0301"}).to_fields()
    assert fields["label"] == "café"


@pytest.mark.parametrize("invisible", ["\u200b", "\u202e", "\u2066", "\ufeff"])
def test_a_label_with_an_invisible_format_character_is_refused(invisible: str) -> None:
    with pytest.raises(
        MalformedRecord, match=f"invisible format character U\\+{ord(invisible):04X} at position 5"
    ):
        FeedbackRecord(text="ok", label=f"sport{invisible}s").validate()
