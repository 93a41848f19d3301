"""Wiring of a learner process: settings in, a running learner loop out, stopped cleanly by SIGTERM/SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading

import redis
import torch

from app.learner_loop import LearnerLoop
from app.settings import Settings
from learner.encoder import load_encoder
from learner.online import OnlineLearner
from learner.stores import open_snapshot_store
from streams.connection import connect


def run_learner(settings: Settings, parent_pid: int | None = None) -> bool:
    """Run until SIGTERM/SIGINT, or until process `parent_pid` is gone: finish the step, snapshot,
    acknowledge, release the lease. True if it stopped because the parent is gone."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    torch.set_num_threads(settings.learner_threads)
    client = connect(settings.redis_url, settings.data_dir)
    stop = threading.Event()
    orphaned = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    if parent_pid is not None:
        threading.Thread(target=_stop_when_orphaned, args=(parent_pid, stop, orphaned), daemon=True).start()
    while not stop.is_set():
        lost_lease = _learner_loop(settings, client).run(stop)
        if not lost_lease:
            break
    return orphaned.is_set()


def _stop_when_orphaned(
    parent_pid: int, stop: threading.Event, orphaned: threading.Event, every_s: float = 1.0
) -> None:
    # A parent killed outright cannot stop its child; the child notices it was handed to another parent.
    while not stop.wait(every_s):
        if os.getppid() != parent_pid:
            logging.getLogger("retentive.learner").warning("the serving process is gone; stopping")
            orphaned.set()
            stop.set()


def _learner_loop(settings: Settings, client: redis.Redis) -> LearnerLoop:
    tokenizer, encoder = load_encoder(settings.model)
    store = open_snapshot_store(settings.snapshot_dir, keep=settings.snapshot_keep)
    learner = OnlineLearner(tokenizer, encoder, settings.learner_config())
    return LearnerLoop(
        learner,
        store,
        client,
        settings.stream_keys(),
        consumer_name=f"{socket.gethostname()}-{os.getpid()}",
        config=settings.loop_config(),
        published=open_snapshot_store(settings.published_dir, keep=2),
        limits=settings.record_limits(),
    )
