"""The reliability suite: real processes under faults, load and abuse. Every module is marked `reliability`;
the long runs are also marked `long` and run only when `-m` names them (`python -m pytest -m long`)."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "long" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="a long reliability run: select it with -m long")
    for item in items:
        if item.get_closest_marker("long"):
            item.add_marker(skip)
