"""Load shapes for the Locust test, chosen by ``GENSEARCH_LOCUST_SHAPE`` in the locustfile.

Both read their parameters from the environment when Locust instantiates them and end
the test (``tick`` returns ``None``) after a bounded time.
"""

from __future__ import annotations

import os

from locust import LoadTestShape


def _env(name: str, default: float) -> float:
    raw = os.environ.get(name, "")
    return float(raw) if raw else default


class StepShape(LoadTestShape):
    """Users increase in steps: ``STEP_USERS`` more every ``STEP_SECONDS``, ``STEPS`` times,
    then the test ends. Finds the load at which latency or errors turn.

    Env (defaults): ``GENSEARCH_LOCUST_STEP_USERS`` (4), ``GENSEARCH_LOCUST_STEP_SECONDS``
    (15), ``GENSEARCH_LOCUST_STEPS`` (5).
    """

    def __init__(self) -> None:
        super().__init__()
        self.step_users = int(_env("GENSEARCH_LOCUST_STEP_USERS", 4))
        self.step_seconds = _env("GENSEARCH_LOCUST_STEP_SECONDS", 15)
        self.steps = int(_env("GENSEARCH_LOCUST_STEPS", 5))

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        if elapsed >= self.step_seconds * self.steps:
            return None
        step = int(elapsed // self.step_seconds) + 1
        # spawn each step's users within about a second
        return step * self.step_users, float(max(1, self.step_users))


class SpikeShape(LoadTestShape):
    """A baseline, a sudden spike, the baseline again, then the end. Shows whether the
    system absorbs a burst (queueing, load shedding) and recovers afterwards.

    Env (defaults): ``GENSEARCH_LOCUST_BASE_USERS`` (4), ``GENSEARCH_LOCUST_SPIKE_USERS``
    (32), ``GENSEARCH_LOCUST_BASE_SECONDS`` (20, before and after the spike),
    ``GENSEARCH_LOCUST_SPIKE_SECONDS`` (10).
    """

    def __init__(self) -> None:
        super().__init__()
        self.base_users = int(_env("GENSEARCH_LOCUST_BASE_USERS", 4))
        self.spike_users = int(_env("GENSEARCH_LOCUST_SPIKE_USERS", 32))
        self.base_seconds = _env("GENSEARCH_LOCUST_BASE_SECONDS", 20)
        self.spike_seconds = _env("GENSEARCH_LOCUST_SPIKE_SECONDS", 10)

    def tick(self) -> tuple[int, float] | None:
        elapsed = self.get_run_time()
        spike_end = self.base_seconds + self.spike_seconds
        if elapsed >= spike_end + self.base_seconds:
            return None
        users = self.spike_users if self.base_seconds <= elapsed < spike_end else self.base_users
        # the spike arrives (and leaves) within about a second
        return users, float(max(1, self.spike_users))
