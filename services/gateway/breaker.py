"""A per-downstream circuit breaker: a dead dependency costs microseconds, not a timeout."""

from __future__ import annotations

import time


class CircuitBreaker:
    """Closed → open after ``failures`` consecutive failures; half-open after ``reset_seconds``.

    In half-open state one trial call is let through; success closes the
    breaker, failure re-opens it for another ``reset_seconds``.
    """

    def __init__(self, name: str, failures: int, reset_seconds: float) -> None:
        self.name = name
        self.threshold = failures
        self.reset_seconds = reset_seconds
        self._consecutive = 0
        self._opened_at: float | None = None
        self._trial_in_flight = False

    @property
    def state(self) -> str:
        if self._opened_at is None:
            return "closed"
        if time.monotonic() - self._opened_at >= self.reset_seconds:
            return "half_open"
        return "open"

    def allow(self) -> bool:
        """Whether a call may go out now."""
        state = self.state
        if state == "closed":
            return True
        if state == "half_open" and not self._trial_in_flight:
            self._trial_in_flight = True
            return True
        return False

    def success(self) -> None:
        self._consecutive = 0
        self._opened_at = None
        self._trial_in_flight = False

    def failure(self) -> None:
        self._consecutive += 1
        self._trial_in_flight = False
        if self._opened_at is not None or self._consecutive >= self.threshold:
            self._opened_at = time.monotonic()
