"""An audit ledger of every applied entry, kept in each snapshot, to prove delivery exactly-once.

`RETENTIVE_LEDGER=true` turns it on; the reliability tests and `bench.soak` read it back from the final
snapshot to show that every accepted entry was applied once. It grows with the stream, so a service leaves
it off.
"""

from __future__ import annotations

from streams.consumer import Entry

Row = list[str]  # [stream id, client id or "", "trained" | "held_out"]


def ledger_rows(entries: list[Entry], held_out: list[bool]) -> list[Row]:
    """One row per applied entry, in the order applied."""
    return [
        [entry.stream_id, entry.record.id or "", "held_out" if held else "trained"]
        for entry, held in zip(entries, held_out, strict=True)
    ]
