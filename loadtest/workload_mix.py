"""The request mix of the Locust load test, free of Locust so that it can be unit-tested.

Text queries come from two pools: the REAL WANDS query strings (``wands/query.csv`` under
the data directory) and the DERIVED catalog queries of the artifact's test split, each
with the real user who issued it. Within a pool, queries repeat with a Zipf-like skew, as
search traffic does: a few head queries make up a large part of the requests. Around them:
anonymous searches, filtered searches, empty-query feeds of known users, item lookups and
a small share of deliberately bad requests whose only acceptable answers are 4xx.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from loadtest.benchmarks.workload import WorkItem, load_workload
from models_export.dataset_files import wands_queries
from services.common.artifacts import ArtifactRepository
from services.common.text import MAX_QUERY_CHARS, normalize_query

SHARE_ENV_PREFIX = "GENSEARCH_LOCUST_SHARE_"
OK = frozenset({200})
# 422 is what the gateway answers today; 400 and 413 are as right for a client's mistake.
INVALID = frozenset({400, 413, 422})
NOT_FOUND = frozenset({404})
KINDS = ("search", "filtered", "feed", "item", "bad", "rag")


@dataclass(frozen=True)
class MixShares:
    """How often each kind of request is planned. The first six are relative weights
    (normalised, so they need not sum to 1); the rest are fractions within a kind.

    Override any field with ``GENSEARCH_LOCUST_SHARE_<FIELD>`` (see :meth:`from_env`).
    """

    search: float = 0.60  # text search, no filters
    filtered: float = 0.08  # text search with a category prefix or excluded ids
    feed: float = 0.15  # empty query: the recommendation feed of a known user
    item: float = 0.15  # GET /v1/items/{id} of an item in a user's history
    bad: float = 0.02  # client mistakes; only a 4xx is acceptable
    rag: float = 0.03  # /v1/rag/context (a question) or /v1/rag/rerank (history items)
    known_user: float = 0.7  # of text searches: sent with a real user id (else anonymous)
    wands: float = 0.3  # of text searches: a real WANDS query (else a derived one)
    exclude_history: float = 0.3  # of feeds: with filters.exclude_history
    zipf_s: float = 1.1  # Zipf exponent of query repeats (higher: a heavier head)
    k: int = 10

    def __post_init__(self) -> None:
        weights = [getattr(self, kind) for kind in KINDS]
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise ValueError(f"kind shares must be >= 0 and not all 0: {weights}")
        for name in ("known_user", "wands", "exclude_history"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> MixShares:
        """Defaults, overridden by ``GENSEARCH_LOCUST_SHARE_<FIELD>`` variables."""
        env = os.environ if env is None else env
        changes: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(SHARE_ENV_PREFIX + f.name.upper())
            if raw:
                changes[f.name] = int(raw) if f.name == "k" else float(raw)
        return replace(cls(), **changes)


@dataclass(frozen=True)
class PlannedRequest:
    """One request of the mix: what to send and which answers count as a success."""

    kind: str
    method: str
    path: str
    body: dict[str, Any] | None
    name: str  # Locust's statistics group
    ok_status: frozenset[int]
    expect_items: bool = False  # a 200 must carry at least one item

    def failure(self, status: int, payload: Callable[[], Any]) -> str | None:
        """Why the answer is a failure (``None``: a success). ``payload`` parses the body;
        it is only called when the items must be checked."""
        if status not in self.ok_status:
            return f"HTTP {status}, expected one of {sorted(self.ok_status)}"
        if self.expect_items and status == 200:
            try:
                items = payload().get("items")
            except (ValueError, AttributeError):
                return "answer is not a JSON object"
            if not items:
                return "200 without items"
        return None


class ZipfPool:
    """Draws from ``values`` with probability proportional to ``1 / rank**s``; the ranks
    are a seeded shuffle, so the head is not simply the start of the file."""

    def __init__(self, values: Sequence[str], s: float, rng: random.Random) -> None:
        if not values:
            raise ValueError("empty query pool")
        self.values = list(values)
        rng.shuffle(self.values)
        weights = [1.0 / (rank**s) for rank in range(1, len(self.values) + 1)]
        self._cum = list(itertools.accumulate(weights))
        self._rng = rng

    def draw(self) -> str:
        return self._rng.choices(self.values, cum_weights=self._cum)[0]


def _bad_requests(k: int) -> list[tuple[str, str, dict[str, Any] | None, frozenset[int]]]:
    """(method, path, body, acceptable) of client mistakes the gateway must refuse."""
    search = "/v1/search"
    return [
        ("POST", search, {"query": "drill bit", "k": 0}, INVALID),
        ("POST", search, {"query": "drill bit", "k": 10_000}, INVALID),
        ("POST", search, {"query": "x" * 5000, "k": k}, INVALID),
        ("POST", search, {"query": "drill bit", "k": k, "filters": {"colour": "red"}}, INVALID),
        ("POST", search, {"query": "drill bit", "k": k, "filters": {"exclude_ids": "7"}}, INVALID),
        ("POST", search, {"query": "drill bit", "k": k, "filters": "tools"}, INVALID),
        ("GET", "/v1/items/zz-no-such-item-0", None, NOT_FOUND),
        ("GET", "/v1/items/not%20an%20id", None, INVALID),
        ("POST", "/v1/rag/rerank", {"query": "which brand", "documents": []}, INVALID),
        ("POST", "/v1/rag/context", {"query": "", "items": 3}, INVALID),
    ]


class RequestMix:
    """Plans requests: ``next()`` draws one according to ``shares`` (seedable)."""

    def __init__(
        self,
        derived: Sequence[WorkItem],
        wands: Sequence[str],
        categories: Sequence[str] = (),
        shares: MixShares | None = None,
        seed: int | None = None,
    ) -> None:
        self.shares = shares or MixShares()
        if not derived:
            raise ValueError("the artifact gave no derived queries / users")
        self.rng = random.Random(seed)
        self.users: dict[str, list[str]] = {user: history for _, user, history in derived}
        self.user_ids = sorted(self.users)
        self.by_query: dict[str, list[str]] = {}
        for query, user, _ in derived:
            # a few derived category queries (every word of a long category path) exceed
            # what the API accepts; people do not type those, and the bad-request share
            # already covers over-long queries
            if len(normalize_query(query)) <= MAX_QUERY_CHARS:
                self.by_query.setdefault(query, []).append(user)
        self.derived = ZipfPool(sorted(self.by_query), self.shares.zipf_s, self.rng)
        wands_pool = sorted({q for q in wands if q.strip()})
        self.wands = ZipfPool(wands_pool, self.shares.zipf_s, self.rng) if wands_pool else None
        self.categories = list(categories)
        self.bad = _bad_requests(self.shares.k)
        planners: dict[str, Callable[[], PlannedRequest]] = {
            "search": self._search,
            "filtered": self._filtered,
            "feed": self._feed,
            "item": self._item,
            "bad": self._bad,
            "rag": self._rag,
        }
        self._planners = [planners[k] for k in KINDS if getattr(self.shares, k) > 0]
        self._weights = [getattr(self.shares, k) for k in KINDS if getattr(self.shares, k) > 0]

    def query(self) -> tuple[str, str | None]:
        """A text query and, when it was a derived one, the user who issued it."""
        if self.wands is not None and self.rng.random() < self.shares.wands:
            return self.wands.draw(), None
        query = self.derived.draw()
        return query, self.rng.choice(self.by_query[query])

    def user(self) -> tuple[str, list[str]]:
        """A known user id and its history (most recent last)."""
        user = self.rng.choice(self.user_ids)
        return user, self.users[user]

    def next(self) -> PlannedRequest:
        """The next request of the mix."""
        return self.rng.choices(self._planners, weights=self._weights)[0]()

    def _search_body(self, query: str, user: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"query": query, "k": self.shares.k}
        if user is not None:
            body["user_id"] = user
        return body

    def _search(self) -> PlannedRequest:
        query, issuer = self.query()
        if self.rng.random() < self.shares.known_user:
            user = issuer or self.user()[0]
            body = self._search_body(query, user)
            return PlannedRequest("search", "POST", "/v1/search", body, "/v1/search", OK, True)
        body = self._search_body(query, None)
        return PlannedRequest("search", "POST", "/v1/search", body, "/v1/search [anon]", OK, True)

    def _filtered(self) -> PlannedRequest:
        query, issuer = self.query()
        user, history = self.user() if issuer is None else (issuer, self.users[issuer])
        body = self._search_body(query, user)
        if self.categories and self.rng.random() < 0.5:
            body["filters"] = {"category": self.rng.choice(self.categories)}
        else:
            body["filters"] = {"exclude_ids": history[-3:]}
        return PlannedRequest(
            "filtered", "POST", "/v1/search", body, "/v1/search [filtered]", OK, True
        )

    def _feed(self) -> PlannedRequest:
        user, _ = self.user()
        body = self._search_body("", user)
        if self.rng.random() < self.shares.exclude_history:
            body["filters"] = {"exclude_history": True}
        return PlannedRequest("feed", "POST", "/v1/search", body, "/v1/search [feed]", OK, True)

    def _item(self) -> PlannedRequest:
        _, history = self.user()
        item = self.rng.choice(history) if history else "0"
        return PlannedRequest("item", "GET", f"/v1/items/{item}", None, "/v1/items/{id}", OK)

    def _bad(self) -> PlannedRequest:
        method, path, body, ok = self.rng.choice(self.bad)
        name = f"{path} [bad]" if not path.startswith("/v1/items/") else "/v1/items/{id} [bad]"
        return PlannedRequest("bad", method, path, body, name, ok)

    def _rag(self) -> PlannedRequest:
        """Half: the context for a shopper's question; half: reranking the passages of
        three history items for it."""
        query, issuer = self.query()
        question = f"which brand makes the {query}"
        if self.rng.random() < 0.5:
            body: dict[str, Any] = {"query": question, "items": 5, "max_documents": 3}
            if issuer is not None:
                body["user_id"] = issuer
            return PlannedRequest("rag", "POST", "/v1/rag/context", body, "/v1/rag/context", OK)
        _, history = self.user()
        docs = [{"item_id": i} for i in history[-3:]] or [{"text": query}]
        body = {"query": question, "documents": docs, "max_documents": 3}
        return PlannedRequest("rag", "POST", "/v1/rag/rerank", body, "/v1/rag/rerank", OK)


def catalog_categories(root: Path, depth: int = 2, version: str | None = None) -> list[str]:
    """Category path prefixes (``depth`` levels, ``' > '``-joined) of the catalog's items,
    one per item that has them, so that drawing from the list favours populous ones."""
    arts = ArtifactRepository(root).open(version)
    table = pq.read_table(arts.path("tables/items.parquet"), columns=["categories"])
    paths = table.column("categories").to_pylist()
    return [" > ".join(p[:depth]) for p in paths if p and len(p) >= depth]


def build_mix(
    artifact_root: Path,
    data_dir: Path,
    n_derived: int = 2000,
    shares: MixShares | None = None,
    seed: int | None = None,
) -> RequestMix:
    """The mix over the artifact's derived queries/users/categories and the WANDS queries
    under ``data_dir`` (not read when the WANDS share is 0)."""
    shares = shares or MixShares()
    wands = wands_queries(data_dir) if shares.wands > 0 else []
    derived = load_workload(artifact_root, n_derived)
    return RequestMix(derived, wands, catalog_categories(artifact_root), shares, seed)
