"""Reading Redis replies: the client may be set to return bytes or str, and the code accepts both."""

from __future__ import annotations


def as_text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
