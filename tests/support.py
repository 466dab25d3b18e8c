"""Helpers for tests that start real processes (one home: ``loadtest.local_stack``)."""

from __future__ import annotations

from loadtest.local_stack import REPO_ROOT, free_port, health, running_process, wait_for

__all__ = ["REPO_ROOT", "free_port", "health", "running_process", "wait_for"]
