"""Real `retentive` processes for end-to-end tests; the launcher is shared with the benchmarks."""

from bench.service import free_port, service_env, serving, wait_ready

__all__ = ["free_port", "service_env", "serving", "wait_ready"]
