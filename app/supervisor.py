"""`retentive serve` runs the learner as a child process: a learner crash never takes serving down, and the
child is started again after it dies."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

from pydantic import SecretStr

from app.settings import Settings, env_name

log = logging.getLogger("retentive.serve")
RESTART_DELAY_S = 2.0


def settings_environment(settings: Settings) -> dict[str, str]:
    """The settings as RETENTIVE_* variables, so a child process sees exactly what the parent resolved."""
    env = dict(os.environ)
    for name in Settings.model_fields:
        value = getattr(settings, name)
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[env_name(name)] = str(value).lower() if isinstance(value, bool) else str(value)
    return env


# The learner serves no request: it never needs the API keys.
_API_ONLY = {env_name("api_keys"), env_name("api_keys_file")}


class LearnerChild:
    def __init__(self, settings: Settings) -> None:
        self.env = {
            name: value for name, value in settings_environment(settings).items() if name not in _API_ONLY
        }
        self.process: subprocess.Popen | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._supervise, name="learner-child", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the learner to finish its step and snapshot (SIGTERM), then wait for it."""
        self._stop.set()
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self._thread.join(timeout=5)

    def _supervise(self) -> None:
        while not self._stop.is_set():
            self.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli", "learn", "--parent-pid", str(os.getpid())], env=self.env
            )
            code = self.process.wait()
            if self._stop.is_set():
                return
            log.warning("learner exited with %s; starting it again in %.0f s", code, RESTART_DELAY_S)
            self._stop.wait(RESTART_DELAY_S)
