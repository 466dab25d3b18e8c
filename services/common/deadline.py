"""Time budgets that travel with a request.

Python gRPC does not propagate deadlines from an incoming call to outgoing
calls, so every hop works from an explicit :class:`Deadline` and passes the
remaining budget on as the next call's timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from services.common.errors import DeadlineExceededError


@dataclass(frozen=True, slots=True)
class Deadline:
    """An absolute point in monotonic time by which work must be done."""

    expires_at: float

    @classmethod
    def after(cls, seconds: float) -> Deadline:
        """A deadline ``seconds`` from now."""
        return cls(time.monotonic() + seconds)

    @classmethod
    def from_remaining(cls, remaining: float | None, default: float) -> Deadline:
        """From a gRPC ``context.time_remaining()`` value (None when the caller set none)."""
        return cls.after(default if remaining is None else remaining)

    def remaining(self) -> float:
        """Seconds left; negative once expired."""
        return self.expires_at - time.monotonic()

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def check(self, stage: str) -> None:
        """Raise :class:`DeadlineExceededError` naming ``stage`` if the budget is spent."""
        if self.expired:
            raise DeadlineExceededError(f"deadline exceeded before {stage}")

    def sub_budget(self, fraction: float, *, reserve: float = 0.0) -> Deadline:
        """A deadline at ``fraction`` of what remains after keeping ``reserve`` seconds."""
        if not 0.0 < fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {fraction}")
        left = max(0.0, self.remaining() - reserve)
        return Deadline(time.monotonic() + left * fraction)

    def timeout(self, stage: str) -> float:
        """The remaining budget as a positive timeout for a downstream call."""
        left = self.remaining()
        if left <= 0.0:
            raise DeadlineExceededError(f"no time budget left for {stage}")
        return left
