"""Probe sets: frozen, labelled examples the learner is measured on and never trains on.

Two sources feed them. A user registers a probe by name ("registered"), or the stream itself gives up a
small fraction of its examples ("held_out"), chosen by a keyed hash of each text (see `held_out`). No
text that is in any probe set is ever trained on (`ProbeRegistry.holds`). Held-out examples are grouped per
label and per arrival window, so that forgetting can be read as "how well does the model still do on what
it saw around position N", without any notion of tasks.

How big a held-out set must be. Forgetting is judged by a paired test on a set's own examples (see
`learner.forgetting`): of the examples right at the reference evaluation and wrong now (b) against those
wrong then and right now (c), b must be significantly more than half of b + c (one-sided exact binomial,
level 0.01). A drop of the alarm threshold (0.2) on n examples means b - c = 0.2 n; with no example
improving (c = 0) that needs b >= 7, so n >= 35, and with the churn a learning model has (a few examples
improving as others drop) more. At `MIN_SIZE` = 50, a 0.2 drop with c = 2 gives b = 12 and p = 0.006: a
set that small can still raise a real alarm, while a smaller one could only ever report noise.

How windows merge and when a set freezes. A label's held-out examples go to its open set, named after the
window it started in. The set keeps growing across later windows until it holds `MIN_SIZE` examples; the
first example of a later window after that starts a new set, and the old one freezes. A set also freezes
when it reaches its capacity (`RETENTIVE_PROBE_SIZE`). A set is evaluated from the time it holds
`MIN_SIZE` examples (`RETENTIVE_PROBE_MIN_SIZE`); it only ever gains examples at its end, so two evaluations
always compare on the examples both scored, and once frozen it scores the same texts for good. At 5% held
out, a set is evaluated once about 1,000 examples of its label went by (5,000 stream examples over 5 even
labels). Registered sets are frozen from the start and evaluated whatever their size; a small one has
little power and rarely alarms.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

Source = Literal["registered", "held_out"]
REGISTERED: Source = "registered"
HELD_OUT: Source = "held_out"

MAX_NAME_LENGTH = 64
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_PLAIN_LABEL = re.compile(r"[A-Za-z0-9_.-]{1,40}")
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_SLUG_KEEP = 24
MIN_SIZE = 50


def held_out(text: str, fraction: float, salt: bytes = b"") -> bool:
    """True when this text belongs to the held-out fraction of the stream.

    Routing hashes the text, not a client's id, so sending a text under another id cannot move it between
    training and probing; and the hash is keyed with the learner's secret `salt` (kept in its snapshots),
    so no client can compute which texts would land in probe sets and poison them. blake2b, not the
    built-in hash() (salted per process), gives the same answer in every process and on every restart.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction!r}")
    if fraction == 0.0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=salt).digest()
    return int.from_bytes(digest, "big") / 2.0**64 < fraction


def validate_name(name: object) -> str:
    """The name itself when valid for a registered probe, else a ValueError saying what is allowed."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or set(name) == {"."}:
        raise ValueError(
            f"invalid probe name {name!r}: use 1-{MAX_NAME_LENGTH} characters from letters, digits, "
            "'_', '.' and '-' (and not only dots)"
        )
    return name


def label_slug(label: str) -> str:
    """The label as it appears in held-out probe names: itself when plain, else escaped and hash-suffixed.

    Plain labels never contain '~' and escaped ones always do, followed by a hash of the whole label, so
    two different labels never share a slug (short of a 40-bit hash collision between labels that also
    escape to the same readable prefix).
    """
    if _PLAIN_LABEL.fullmatch(label):
        return label
    readable = _LABEL_UNSAFE.sub("_", label)[:_SLUG_KEEP]
    digest = hashlib.blake2b(label.encode("utf-8"), digest_size=5).hexdigest()
    return f"{readable}~{digest}"


def held_out_name(label: str, window: int) -> str:
    """Name of the held-out probe set for this label and arrival window."""
    return f"held_out:{label_slug(label)}:w{window}"


def _check_example(text: object, label: object) -> tuple[str, str]:
    if not isinstance(text, str) or not text:
        raise ValueError("probe example text must be a non-empty string")
    if not isinstance(label, str) or not label:
        raise ValueError("probe example label must be a non-empty string")
    return text, label


@dataclass
class ProbeSet:
    """A named set of labelled examples; once `frozen` it takes no more and is evaluated."""

    name: str
    source: Source
    examples: list[tuple[str, str]]
    created_at_update: int
    capacity: int
    # Only held-out sets have these: the label they collect and their arrival window index.
    label: str | None = None
    window: int | None = None
    frozen: bool = False

    @property
    def size(self) -> int:
        return len(self.examples)

    @property
    def full(self) -> bool:
        return self.size >= self.capacity

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "name": self.name,
            "source": self.source,
            "examples": [[text, label] for text, label in self.examples],
            "created_at_update": self.created_at_update,
            "capacity": self.capacity,
            "label": self.label,
            "window": self.window,
            "frozen": self.frozen,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeSet:
        """Inverse of `to_dict`."""
        source = data["source"]
        if source not in (REGISTERED, HELD_OUT):
            raise ValueError(f"unknown probe source {source!r}")
        label, window = data.get("label"), data.get("window")
        if source == HELD_OUT and (not isinstance(label, str) or not isinstance(window, int)):
            raise ValueError(f"held-out probe {data['name']!r} needs a label and a window index")
        return cls(
            name=str(data["name"]),
            source=source,
            examples=[_check_example(text, gold) for text, gold in data["examples"]],
            created_at_update=int(data["created_at_update"]),
            capacity=int(data["capacity"]),
            label=label,
            window=window,
            # Sets saved before sets spanned windows belong to one window each: they stay as they are.
            frozen=bool(data.get("frozen", True)),
        )


class ProbeRegistry:
    """All probe sets of a learner, registered and held out.

    Registered probes are named by the user, hold at most `max_per_probe` examples and are frozen on
    registration. Held-out sets are named `held_out:{label}:w{window}` (see `label_slug`); the ':' keeps
    them apart from registered names, which cannot contain it, so a user can never overwrite one.

    Bounds: a held-out set freezes at `max_per_probe` examples, or once it holds `min_size` and its
    label's next example comes from a later window (see the module's notes); at most `max_probes` held-out
    sets exist, and making room for a new one retires (drops) the oldest one, i.e. the one with the smallest
    window index (ties broken by name). A set is only retired for one from a strictly later window;
    otherwise the new example overflows. At most `max_probes` registered probes exist. Retired names are
    queued for `drain_retired()` so the caller can drop their metric history.

    Positions given to `add_held_out` are expected to grow with the stream: an example that lands in an
    already retired window starts that window's set anew.
    """

    def __init__(
        self, max_per_probe: int = 200, window: int = 1000, max_probes: int = 1000, min_size: int = MIN_SIZE
    ) -> None:
        if max_per_probe < 1 or window < 1 or max_probes < 1 or min_size < 1:
            raise ValueError("max_per_probe, window, max_probes and min_size must all be at least 1")
        self.max_per_probe = max_per_probe
        self.min_size = min(min_size, max_per_probe)
        self.window = window
        self.max_probes = max_probes
        self._probes: dict[str, ProbeSet] = {}
        self._texts: Counter[str] = Counter()
        self._retired: list[str] = []
        self.held_out = 0
        self.overflow = 0
        self.retired = 0

    def __len__(self) -> int:
        return len(self._probes)

    def __contains__(self, name: object) -> bool:
        return name in self._probes

    def holds(self, text: str) -> bool:
        """Whether any probe set holds this text: such a text is never trained on."""
        return self._texts[text] > 0

    def get(self, name: str) -> ProbeSet | None:
        return self._probes.get(name)

    def probes(self) -> list[ProbeSet]:
        """Every probe set, sorted by name; none of them is empty."""
        return [self._probes[name] for name in sorted(self._probes)]

    def evaluable(self) -> list[ProbeSet]:
        """The sets that are evaluated, sorted by name: frozen ones and those that hold `min_size`."""
        return [probe for probe in self.probes() if probe.frozen or probe.size >= self.min_size]

    def register(self, name: str, examples: Iterable[Sequence[str]], updates: int) -> ProbeSet:
        """Create or replace the registered probe `name` from (text, label) pairs.

        Replacing starts a new probe: the caller should drop the old one's metric history.
        """
        validate_name(name)
        pairs = []
        for example in examples:
            if len(example) != 2:
                raise ValueError("each probe example must be a (text, label) pair")
            pairs.append(_check_example(example[0], example[1]))
        if not pairs:
            raise ValueError("a probe needs at least one example")
        if len(pairs) > self.max_per_probe:
            raise ValueError(f"a probe holds at most {self.max_per_probe} examples, got {len(pairs)}")
        if name not in self._probes and self._count(REGISTERED) >= self.max_probes:
            raise ValueError(f"at most {self.max_probes} registered probes may exist")
        probe = ProbeSet(
            name=name,
            source=REGISTERED,
            examples=pairs,
            created_at_update=updates,
            capacity=len(pairs),
            frozen=True,
        )
        self.remove(name)
        self._probes[name] = probe
        self._texts.update(text for text, _ in pairs)
        return probe

    def remove(self, name: str) -> bool:
        """Delete a probe set of either source; False when there was none of that name."""
        probe = self._probes.pop(name, None)
        if probe is not None:
            self._texts.subtract(text for text, _ in probe.examples)
        return probe is not None

    def remove_label(self, label: str) -> list[str]:
        """Delete the held-out sets of this label; their names."""
        names = [p.name for p in self.probes() if p.source == HELD_OUT and p.label == label]
        for name in names:
            self.remove(name)
        return names

    def add_held_out(self, text: str, label: str, position: int, updates: int) -> str | None:
        """Store a held-out example in its label/window set; the set's name, or None when it overflowed.

        Either way the example was held out and must not be trained on.
        """
        _check_example(text, label)
        if position < 0:
            raise ValueError(f"stream position must be non-negative, got {position}")
        self.held_out += 1
        window = position // self.window
        probe = self._open_set(label)
        if probe is not None and probe.window < window and probe.size >= self.min_size:
            probe.frozen, probe = True, None
        if probe is None:
            name = held_out_name(label, window)
            if name in self._probes or not self._make_room(window):
                self.overflow += 1
                return None
            probe = ProbeSet(
                name=name,
                source=HELD_OUT,
                examples=[],
                created_at_update=updates,
                capacity=self.max_per_probe,
                label=label,
                window=window,
            )
            self._probes[name] = probe
        probe.examples.append((text, label))
        self._texts[text] += 1
        probe.frozen = probe.full
        return probe.name

    def _open_set(self, label: str) -> ProbeSet | None:
        """The held-out set still collecting this label's examples, if any."""
        return next(
            (p for p in self._probes.values() if p.source == HELD_OUT and p.label == label and not p.frozen),
            None,
        )

    def drain_retired(self) -> list[str]:
        """Names of held-out sets retired since the last call."""
        retired, self._retired = self._retired, []
        return retired

    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable snapshot of the probes and counters (not the constructor settings)."""
        return {
            "probes": [probe.to_dict() for probe in self.probes()],
            "held_out": self.held_out,
            "overflow": self.overflow,
            "retired": self.retired,
            "pending_retired": list(self._retired),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replace the registry's contents with a snapshot from `state_dict`."""
        try:
            probes = {}
            for item in state["probes"]:
                probe = ProbeSet.from_dict(item)
                probes[probe.name] = probe
            counters = (int(state["held_out"]), int(state["overflow"]), int(state["retired"]))
            pending = [str(name) for name in state["pending_retired"]]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"malformed probe registry state: {exc!r}") from exc
        self._probes = probes
        self._texts = Counter(text for probe in probes.values() for text, _ in probe.examples)
        self.held_out, self.overflow, self.retired = counters
        self._retired = pending

    def _count(self, source: Source) -> int:
        return sum(1 for probe in self._probes.values() if probe.source == source)

    def _make_room(self, window: int) -> bool:
        """Ensure a new held-out set for `window` fits, retiring the oldest set if it is older."""
        held = [probe for probe in self._probes.values() if probe.source == HELD_OUT]
        if len(held) < self.max_probes:
            return True
        oldest = min(held, key=lambda probe: (probe.window, probe.name))
        if oldest.window is None or oldest.window >= window:
            return False
        self.remove(oldest.name)
        self._retired.append(oldest.name)
        self.retired += 1
        return True


def due_for_evaluation(
    probes: Iterable[ProbeSet], budget: int, last_evaluated: Callable[[str], int | None]
) -> list[ProbeSet]:
    """The sets one evaluation scores: never-evaluated ones first, then those evaluated longest ago, while
    their texts fit in `budget`.

    The first set is taken even when it alone is over the budget, and the order stops at the first set
    that does not fit rather than skipping it, so no set waits for ever behind smaller ones. Each set is
    scored whole, so its paired comparison with its reference stays exact; the cost of one evaluation is
    bounded by the budget however many sets exist, and every set is reached within total size / budget
    evaluations (plus one).
    """

    def staleness(probe: ProbeSet) -> tuple[int, str]:
        updates = last_evaluated(probe.name)
        return (-1 if updates is None else updates, probe.name)

    chosen, texts = [], 0
    for probe in sorted(probes, key=staleness):
        if chosen and texts + probe.size > budget:
            break
        chosen.append(probe)
        texts += probe.size
    return chosen


def evaluate(probes: Iterable[ProbeSet], predict: Callable[[list[str]], list[str]]) -> dict[str, list[bool]]:
    """Whether `predict` gets each example of each non-empty probe right, in the probe's order, by name.

    `predict` is called once with the texts of all probes together (batching them is its job).
    """
    selected = [probe for probe in probes if probe.examples]
    names = [probe.name for probe in selected]
    if len(set(names)) != len(names):
        raise ValueError("probe names must be unique")
    if not selected:
        return {}
    texts = [text for probe in selected for text, _ in probe.examples]
    predictions = list(predict(texts))
    if len(predictions) != len(texts):
        raise ValueError(f"predict returned {len(predictions)} labels for {len(texts)} texts")
    outcomes = {}
    start = 0
    for probe in selected:
        end = start + probe.size
        outcomes[probe.name] = [
            predicted == label
            for predicted, (_, label) in zip(predictions[start:end], probe.examples, strict=True)
        ]
        start = end
    return outcomes
