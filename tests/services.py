"""Real `retentive` processes for end-to-end tests; the launcher is shared with the benchmarks."""

from bench.service import QUICK_LEARNER, free_port, learner_and_replicas, service_env, serving, wait_ready

__all__ = ["QUICK_LEARNER", "free_port", "learner_and_replicas", "service_env", "serving", "wait_ready"]
