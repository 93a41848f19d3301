"""Waiting in tests for something that happens in another thread or process."""

from bench.service import eventually

__all__ = ["eventually"]
