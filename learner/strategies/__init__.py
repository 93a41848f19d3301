"""Update strategies, registered by name: each is one module here that owns its optimizer, what it measures
during the forward pass, how it builds a step's batch and its own snapshot state.

Adding a strategy is one new module with a `Strategy` subclass and one `@register("name")`, imported below;
the settings (their validation and description), `bench.cl_stream --strategies` and the docs generated from
the settings read the registry.
"""

from __future__ import annotations

# Each import registers its strategy, in the order they are listed to users.
# isort: off
from learner.strategies import sgd  # noqa: F401
from learner.strategies import migu  # noqa: F401
from learner.strategies import replay  # noqa: F401
from learner.strategies import migu_replay  # noqa: F401

# isort: on
from learner.strategies.base import (
    Strategy,
    StrategyContext,
    describe,
    make_strategy,
    names,
    register,
    strategy_class,
)

__all__ = [
    "Strategy",
    "StrategyContext",
    "describe",
    "make_strategy",
    "names",
    "register",
    "strategy_class",
]
