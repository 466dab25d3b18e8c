"""JSON logging that carries the current request id.

The request id lives in a context variable set by the server interceptor (or
the gateway middleware); a logging filter copies it into every record.
"""

from __future__ import annotations

import contextvars
import logging
import sys

from pythonjsonlogger.json import JsonFormatter

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")


class _RequestIdFilter(logging.Filter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "request_id", ""):  # a record may name its own (extra=)
            record.request_id = request_id_var.get()
        record.service = self.service
        return True


def json_handler(service: str, handler: logging.Handler) -> logging.Handler:
    """``handler`` writing JSON lines (time, level, logger, message, service, request_id)."""
    handler.addFilter(_RequestIdFilter(service))
    handler.setFormatter(
        JsonFormatter(
            "%(asctime)s %(levelname)s %(name)s %(message)s %(service)s %(request_id)s",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
        )
    )
    return handler


def configure_logging(service: str, level: str = "INFO") -> None:
    """Send JSON lines (time, level, logger, message, service, request_id) to stderr."""
    root = logging.getLogger()
    root.handlers[:] = [json_handler(service, logging.StreamHandler(sys.stderr))]
    root.setLevel(level.upper())
