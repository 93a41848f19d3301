"""The weights an API process serves, swapped whole when the learner publishes a newer snapshot.

A request takes one reference to the current `ServedModel` and uses it to the end, so it never sees half a
model. New versions arrive by pub/sub on the model's versions channel, with a periodic check as fallback
for a missed message; loading happens off the request path. Versions come from two stores, full snapshots
and weights published between them, which share one sequence: the newest of either is served.

A snapshot whose weights failed the learner's promotion check (`promoted: false` in its manifest) is
never served: the holder keeps the last version that passed.

A version that fails to load (a broken state file, weights of another shape, a store that errors) is logged
and counted, the last good version stays in service, and loading is tried again at the next check. The
holder also notes how far it is behind the newest published version, which `/readyz` reports.

With `quantize` (RETENTIVE_SERVE_QUANTIZE) each version is served as an int8 copy (`learner.quantization`),
rebuilt from the float snapshot at every swap.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from dataclasses import dataclass

import redis
import torch

from learner.classifier import Prediction, TextClassifier
from learner.encoder import Encoder, load_encoder
from learner.quantization import quantized
from learner.snapshots import MODEL, Manifest, Snapshot, SnapshotStore
from streams.keys import StreamKeys
from streams.notify import latest_version, subscribe_versions

log = logging.getLogger("retentive.api")


@dataclass(frozen=True)
class ServedModel:
    version: int
    snapshot_id: str
    classifier: TextClassifier

    def predict(self, texts: list[str], top_k: int) -> list[Prediction]:
        return self.classifier.predict(texts, top_k=top_k)


class ModelHolder:
    """Holds the newest published model; `current` is None until the learner has written a snapshot."""

    def __init__(
        self,
        model: str,
        store: SnapshotStore,
        published: SnapshotStore | None = None,
        device: torch.device | None = None,
        quantize: bool = False,
    ) -> None:
        self.model = model
        self.device = device or torch.device("cpu")
        self.quantize = quantize
        self.store = store
        self.published = published
        self.current: ServedModel | None = None
        self.refresh_failures = 0
        self.newest_published: int | None = None
        self.behind_since: float | None = None
        self._loading = threading.Lock()
        self._base: Encoder | None = None

    def _fresh_encoder(self) -> Encoder:
        # Read the base model from disk once; each swap copies it and then overwrites its weights.
        if self._base is None:
            self._base = load_encoder(self.model)
        tokenizer, encoder = self._base
        return tokenizer, copy.deepcopy(encoder)

    def refresh(self) -> bool:
        """Load the newest valid snapshot if it is newer than the one served; True if it swapped."""
        with self._loading:
            served = self.current.version if self.current else 0
            snapshot = self._newest_valid(above=served)
            if snapshot is None:
                return False
            classifier = TextClassifier.from_snapshot(*self._fresh_encoder(), snapshot).to(self.device)
            if self.quantize:
                classifier = quantized(classifier)
            self.current = ServedModel(snapshot.manifest.version, snapshot.id, classifier)
            log.info("serving model version %d (%s)", self.current.version, self.current.snapshot_id)
            return True

    def _newest_valid(self, above: int) -> Snapshot | None:
        """The newest loadable weights of either store with a version above `above`."""
        found = []
        for store in (self.store, self.published):
            if store is None or store.max_version() <= above:
                continue
            snapshot, problems = store.load_latest_valid(
                only=[MODEL, "state"], accept=lambda manifest: _servable(manifest, above)
            )
            for problem in problems:
                log.warning("snapshot skipped: %s", problem)
            if snapshot is not None and snapshot.manifest.version > above:
                found.append(snapshot)
        return max(found, key=lambda snapshot: snapshot.manifest.version, default=None)

    def follow(
        self, client: redis.Redis, keys: StreamKeys, stop: threading.Event, check_s: float = 5.0
    ) -> None:
        """Refresh on every version announcement, and every `check_s` in case one was missed.

        Waits for announcements a second at a time, so that a set `stop` ends it within about a second."""
        pubsub = None
        next_check = time.monotonic() + check_s
        while not stop.is_set():
            try:
                pubsub = pubsub or subscribe_versions(client, keys)
                announced = pubsub.get_message(timeout=1.0) is not None
            except redis.RedisError as err:
                log.warning("version announcements unavailable: %s", err)
                pubsub = None
                announced = False
                stop.wait(check_s)
            if announced or time.monotonic() >= next_check:
                self._refresh_or_keep_serving()
                self._note_newest(client, keys)
                next_check = time.monotonic() + check_s
        if pubsub is not None:
            pubsub.close()

    def _refresh_or_keep_serving(self) -> None:
        try:
            self.refresh()
        except Exception:
            # Whatever broke the load, the version in service is still whole: keep it and try again later.
            self.refresh_failures += 1
            served = self.current.version if self.current else None
            log.exception("could not load the newest version; still serving version %s", served)

    def _note_newest(self, client: redis.Redis, keys: StreamKeys) -> None:
        try:
            newest = latest_version(client, keys)
        except redis.RedisError:
            return
        self.newest_published = newest[0] if newest else None
        if self.versions_behind() == 0:
            self.behind_since = None
        elif self.behind_since is None:
            self.behind_since = time.monotonic()

    def versions_behind(self) -> int:
        """Published versions newer than the one served, as of the last check."""
        served = self.current.version if self.current else 0
        return max((self.newest_published or 0) - served, 0)

    def staleness(self, max_versions: int, max_s: float) -> str | None:
        """Why this replica is too far behind to be called ready, or None."""
        behind = self.versions_behind()
        if behind > max_versions:
            return f"{behind} versions behind the newest published ({self.newest_published})"
        if self.behind_since is not None and time.monotonic() - self.behind_since > max_s:
            return f"behind the newest published version ({self.newest_published}) for over {max_s:g} s"
        return None


def _servable(manifest: Manifest, above: int) -> bool:
    """Newer than the version served, and not held back by the promotion check."""
    return manifest.version > above and manifest.info.get("promoted", True) is not False
