"""Locust users for the gateway's HTTP API.

``pip install -e ".[loadtest]"``, start the stack (``make run``), then::

    locust -f loadtest/locustfile.py --host http://127.0.0.1:8000 \\
        --headless -u 16 -r 4 -t 60s

Queries are DERIVED (Ai et al. 2017 category-path words of test-split targets),
sent with the real user ids of the artifact the gateway serves, so the gateway
looks up each user's history as in production. ``GENSEARCH_ARTIFACT_DIR`` (default
``./artifacts``) names the repository the queries are read from;
``GENSEARCH_LOCUST_API_KEY`` is sent as ``X-API-Key`` when set.
"""

from __future__ import annotations

import os
import random

from locust import FastHttpUser, between, task

from loadtest.benchmarks.workload import load_workload
from services.common.config import artifact_root

WORKLOAD = load_workload(artifact_root(), int(os.environ.get("GENSEARCH_LOCUST_QUERIES", "2000")))
API_KEY = os.environ.get("GENSEARCH_LOCUST_API_KEY", "")


class SearchUser(FastHttpUser):
    """A shopper: mostly searches, sometimes opens an item or scrolls the feed."""

    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.headers = {"X-API-Key": API_KEY} if API_KEY else {}

    def _check(self, name: str, path: str, body: dict[str, object] | None = None) -> None:
        method = self.client.post if body is not None else self.client.get
        with method(path, json=body, headers=self.headers, name=name, catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"HTTP {r.status_code}: {r.text[:200]}")
            elif body is not None and not r.json().get("items"):
                r.failure("empty answer")

    @task(8)
    def search(self) -> None:
        query, user, _ = random.choice(WORKLOAD)
        self._check("/v1/search", "/v1/search", {"query": query, "user_id": user, "k": 10})

    @task(2)
    def feed(self) -> None:
        _, user, _ = random.choice(WORKLOAD)
        self._check("/v1/search [feed]", "/v1/search", {"query": "", "user_id": user, "k": 10})

    @task(1)
    def item(self) -> None:
        _, _, history = random.choice(WORKLOAD)
        if history:
            self._check("/v1/items/{id}", f"/v1/items/{history[-1]}")
