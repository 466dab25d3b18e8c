"""The gateway's HTTP errors: a status, a message safe to show, optional headers."""

from __future__ import annotations


class ApiError(Exception):
    """Answered as ``{"detail": ...}`` with ``status`` (and ``headers``, e.g. Retry-After)."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.headers = status, detail, headers or {}
