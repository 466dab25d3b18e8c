"""Semantic IDs by RQ-OPQ, with collisions removed by minimum-cost reassignment.

RQ-OPQ (as in OneSearch, arXiv 2509.03236, and SMILE): a few levels of residual
k-means (``faiss.Kmeans``) give coarse-to-fine semantic prefixes; the residual left
after them is rotated by OPQ (``faiss.OPQMatrix``) and product-quantised
(``faiss.ProductQuantizer``), one token per PQ sub-space. The tokens of an item are
``[rq_0, ..., rq_{R-1}, pq_0, ..., pq_{M-1}]``.

Optionally a collaborative signal is fused before quantisation: a low-rank PPMI
embedding of item co-occurrence in the TRAINING histories, concatenated with the text
embedding with weights ``sqrt(1-w)`` and ``sqrt(w)``.

Collisions (items sharing a full SID) are resolved the way ZCR does (the collision
removal of "Faithful Evaluation of Semantic-ID Tokenizers for Generative
Recommendation"): in each group the item nearest its code keeps it, the others move to
the nearest unused code of the last level under the same prefix, solved jointly as an
assignment problem (``scipy.optimize.linear_sum_assignment``). No counter token is
appended. Only if a prefix has no free last-level code left are the last two levels
reassigned together.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix, csr_matrix
from scipy.sparse.linalg import svds
from tqdm import tqdm

MAX_LEVELS = 5
_BIG = 1e12  # cost of a forbidden (already used) code in the assignment problems


@dataclass(frozen=True, slots=True)
class SidConfig:
    """RQ-OPQ settings. Defaults are sized for the 4,344-item catalog (4 tokens, 2,816 codes).

    The defaults were chosen on docs/results/tokenizer_comparison.md and
    generative_quality.md. Balanced assignment and a collaborative weight of 0.3 add
    distinct SIDs without letting the collaborative part dominate the first token. With
    256-wide levels throughout, near-duplicate products (size/gauge variants) kept
    colliding before resolution (4,227 distinct of 4,344); a wide second level (2048)
    separates them while the first token stays a 256-way, category-like choice (a
    1024-wide first level was as distinct but generated worse).
    """

    rq_levels: tuple[int, ...] = (256, 2048)
    opq_subspaces: int = 2
    opq_bits: int = 8  # each PQ sub-space has 2**opq_bits codes
    kmeans_niter: int = 25
    opq_niter: int = 25
    seed: int = 1234
    # Capacity-constrained ("balanced") assignment: each code of a level takes at most
    # ceil(capacity_slack * N / K) items; 0 = plain nearest-centroid assignment.
    capacity_slack: float = 1.0
    balance_iters: int = 3  # balanced assign + centroid update rounds after k-means
    collab_weight: float = 0.3  # 0 = text only
    collab_dim: int = 32
    resolve_collisions: bool = True
    # faiss OpenMP threads. 1 by default: on a shared 2-core machine two spinning OpenMP
    # threads made OPQ training ~30x slower (10 s vs 0.3 s per iteration) under load.
    threads: int = 1

    def __post_init__(self) -> None:
        if self.depth < 1 or self.depth > MAX_LEVELS:
            raise ValueError(f"SID depth must be 1..{MAX_LEVELS}, got {self.depth}")
        if any(k < 1 for k in self.rq_levels):
            raise ValueError("rq_levels must be positive codebook sizes")
        if self.opq_subspaces and not 1 <= self.opq_bits <= 16:
            raise ValueError("opq_bits must be 1..16")
        if self.capacity_slack and self.capacity_slack < 1.0:
            raise ValueError("capacity_slack must be 0 (off) or >= 1")
        if not 0.0 <= self.collab_weight < 1.0:
            raise ValueError("collab_weight must be in [0, 1)")

    @property
    def depth(self) -> int:
        return len(self.rq_levels) + self.opq_subspaces

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return tuple(self.rq_levels) + (1 << self.opq_bits,) * self.opq_subspaces

    def label(self) -> str:
        parts = ["-".join(str(k) for k in self.rq_levels) or "none"]
        if self.opq_subspaces:
            parts.append(f"OPQ {self.opq_subspaces}x{1 << self.opq_bits}")
        if self.capacity_slack:
            parts.append(f"balanced x{self.capacity_slack:g}")
        if self.collab_weight:
            parts.append(f"collab w={self.collab_weight:g} d={self.collab_dim}")
        return "RQ " + " + ".join(parts)


# --------------------------------------------------------------------------- quantiser


@dataclass(slots=True)
class RqOpqQuantizer:
    """Trained RQ-OPQ codebooks. ``encode`` maps vectors to codes (e.g. cold-start items)."""

    rq_centroids: list[np.ndarray]  # per RQ level (K_l, d)
    opq_rotation: np.ndarray | None  # (d_pad, d_pad); rotated = x_pad @ rotation.T
    pq_centroids: np.ndarray | None  # (M, ksub, dsub)
    dim: int

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        sizes = [c.shape[0] for c in self.rq_centroids]
        if self.pq_centroids is not None:
            sizes += [self.pq_centroids.shape[1]] * self.pq_centroids.shape[0]
        return tuple(sizes)

    def level_targets(self, x: np.ndarray, codes: np.ndarray) -> list[np.ndarray]:
        """For each level, the vectors its codebook quantises (given the earlier codes)."""
        residual = np.array(x, dtype=np.float32, copy=True)
        targets: list[np.ndarray] = []
        for level, cents in enumerate(self.rq_centroids):
            targets.append(residual.copy())
            residual -= cents[codes[:, level]]
        if self.pq_centroids is not None and self.opq_rotation is not None:
            rotated = _pad(residual, self.opq_rotation.shape[0]) @ self.opq_rotation.T
            dsub = self.pq_centroids.shape[2]
            for m in range(self.pq_centroids.shape[0]):
                targets.append(np.ascontiguousarray(rotated[:, m * dsub : (m + 1) * dsub]))
        return targets

    def level_centroids(self, level: int) -> np.ndarray:
        n_rq = len(self.rq_centroids)
        if level < n_rq:
            return self.rq_centroids[level]
        assert self.pq_centroids is not None
        return self.pq_centroids[level - n_rq]

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Nearest-centroid codes, level by level (no capacity limit, no collision resolution).

        For a model trained with ``capacity_slack`` this is how new (cold-start) items get
        codes; the training items' own codes came from the balanced assignment instead.
        """
        residual = np.array(x, dtype=np.float32, copy=True)
        codes = np.zeros((len(x), len(self.codebook_sizes)), dtype=np.int32)
        for level, cents in enumerate(self.rq_centroids):
            codes[:, level] = _nearest(residual, cents)
            residual -= cents[codes[:, level]]
        if self.pq_centroids is not None and self.opq_rotation is not None:
            rotated = _pad(residual, self.opq_rotation.shape[0]) @ self.opq_rotation.T
            dsub = self.pq_centroids.shape[2]
            n_rq = len(self.rq_centroids)
            for m in range(self.pq_centroids.shape[0]):
                sub = rotated[:, m * dsub : (m + 1) * dsub]
                codes[:, n_rq + m] = _nearest(sub, self.pq_centroids[m])
        return codes

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Reconstruction of the (fused) input vectors from codes."""
        out = np.zeros((len(codes), self.dim), dtype=np.float32)
        for level, cents in enumerate(self.rq_centroids):
            out += cents[codes[:, level]]
        if self.pq_centroids is not None and self.opq_rotation is not None:
            n_rq = len(self.rq_centroids)
            parts = [
                self.pq_centroids[m][codes[:, n_rq + m]] for m in range(self.pq_centroids.shape[0])
            ]
            rotated = np.concatenate(parts, axis=1)
            out += (rotated @ self.opq_rotation)[:, : self.dim]
        return out

    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {"dim": np.asarray(self.dim, dtype=np.int64)}
        for level, cents in enumerate(self.rq_centroids):
            arrays[f"rq_centroids_{level}"] = cents
        if self.opq_rotation is not None and self.pq_centroids is not None:
            arrays["opq_rotation"] = self.opq_rotation
            arrays["pq_centroids"] = self.pq_centroids
        np.savez(path, **arrays)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: Path) -> RqOpqQuantizer:
        with np.load(path, allow_pickle=False) as data:
            n_rq = sum(1 for k in data.files if k.startswith("rq_centroids_"))
            rq = [data[f"rq_centroids_{i}"] for i in range(n_rq)]
            rot = data["opq_rotation"] if "opq_rotation" in data.files else None
            pqc = data["pq_centroids"] if "pq_centroids" in data.files else None
            return cls(rq, rot, pqc, int(data["dim"]))


def _pad(x: np.ndarray, width: int) -> np.ndarray:
    if x.shape[1] == width:
        return x
    out = np.zeros((x.shape[0], width), dtype=x.dtype)
    out[:, : x.shape[1]] = x
    return out


def _sq_dists(x: np.ndarray, cents: np.ndarray) -> np.ndarray:
    d = (x * x).sum(1)[:, None] - 2.0 * (x @ cents.T) + (cents * cents).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _nearest(x: np.ndarray, cents: np.ndarray) -> np.ndarray:
    return _sq_dists(x, cents).argmin(1).astype(np.int32)


def balanced_assign(dists: np.ndarray, capacity: int) -> np.ndarray:
    """Assign rows to columns (codes), at most ``capacity`` rows per code, near codes first.

    Deferred acceptance (Gale-Shapley): every unassigned item proposes to its nearest
    code it has not been refused by; each code keeps the ``capacity`` nearest proposers
    and refuses the rest. The result is stable: no item and code would both rather be
    matched with each other than with what they have.
    """
    n, k = dists.shape
    if capacity * k < n:
        raise ValueError(f"{k} codes x capacity {capacity} cannot hold {n} items")
    prefs = np.argsort(dists, axis=1, kind="stable")
    nxt = np.zeros(n, dtype=np.int64)
    assign = np.full(n, -1, dtype=np.int64)
    free = np.arange(n)
    while len(free):
        proposals = prefs[free, nxt[free]]
        held = np.flatnonzero(assign >= 0)
        rows = np.concatenate([held, free])
        cols = np.concatenate([assign[held], proposals])
        order = np.lexsort((rows, dists[rows, cols], cols))
        rows, cols = rows[order], cols[order]
        rank = np.arange(len(cols)) - np.searchsorted(cols, cols, side="left")
        keep = rank < capacity
        assign[rows[keep]] = cols[keep]
        free = rows[~keep]
        assign[free] = -1
        nxt[free] += 1
    return assign.astype(np.int32)


def _assign(x: np.ndarray, cents: np.ndarray, capacity: int | None) -> np.ndarray:
    if capacity is None:
        return _nearest(x, cents)
    return balanced_assign(_sq_dists(x, cents), capacity)


def _fit_level(
    x: np.ndarray, cents: np.ndarray, capacity: int | None, iters: int
) -> tuple[np.ndarray, np.ndarray]:
    """Codes of ``x``; with a capacity, alternate balanced assignment and centroid update."""
    if capacity is None:
        return cents, _nearest(x, cents)
    cents = cents.copy()
    for _ in range(iters):
        codes = balanced_assign(_sq_dists(x, cents), capacity)
        sums = np.zeros_like(cents)
        np.add.at(sums, codes, x)
        counts = np.bincount(codes, minlength=len(cents))
        used = counts > 0
        cents[used] = sums[used] / counts[used, None]
    return cents, balanced_assign(_sq_dists(x, cents), capacity)


def _capacity(config: SidConfig, n: int, k: int) -> int | None:
    if not config.capacity_slack:
        return None
    return math.ceil(config.capacity_slack * n / k)


def _kmeans(x: np.ndarray, k: int, niter: int, seed: int) -> np.ndarray:
    if k > len(x):
        raise ValueError(f"cannot cluster {len(x)} vectors into {k} centroids")
    # Small catalogs have few points per centroid by nature: use every item, and do not
    # let faiss warn about having less than 39 per centroid.
    km = faiss.Kmeans(
        x.shape[1],
        k,
        niter=niter,
        seed=seed,
        verbose=False,
        min_points_per_centroid=1,
        max_points_per_centroid=max(256, math.ceil(len(x) / k) + 1),
    )
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32)


def _clustering_parameters(config: SidConfig, n: int, k: int) -> Any:
    cp = faiss.ClusteringParameters()
    cp.niter = config.kmeans_niter
    cp.seed = config.seed
    cp.min_points_per_centroid = 1
    cp.max_points_per_centroid = max(256, math.ceil(n / k) + 1)
    return cp


def fit_rq_opq(x: np.ndarray, config: SidConfig) -> tuple[RqOpqQuantizer, np.ndarray]:
    """Train RQ-OPQ on ``x`` (float32 (N, d)) and return it with the raw (unresolved) codes."""
    faiss.omp_set_num_threads(max(1, config.threads))
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, dim = x.shape
    residual = x.copy()
    rq: list[np.ndarray] = []
    codes = np.zeros((n, config.depth), dtype=np.int32)
    bar = tqdm(total=config.depth, desc="RQ-OPQ levels", leave=False)
    for level, k in enumerate(config.rq_levels):
        cents = _kmeans(residual, k, config.kmeans_niter, config.seed + level)
        cents, codes[:, level] = _fit_level(
            residual, cents, _capacity(config, n, k), config.balance_iters
        )
        residual -= cents[codes[:, level]]
        rq.append(cents)
        bar.update()
    rotation: np.ndarray | None = None
    pq_cents: np.ndarray | None = None
    if config.opq_subspaces:
        m = config.opq_subspaces
        width = math.ceil(dim / m) * m
        padded = np.ascontiguousarray(_pad(residual, width))
        ksub = 1 << config.opq_bits
        if ksub > n:
            raise ValueError(f"cannot train {ksub}-code PQ sub-spaces on {n} vectors")
        if n <= width:
            # faiss's OPQMatrix.train crashes (segfault) on fewer vectors than dimensions.
            raise ValueError(f"OPQ needs more vectors than dimensions ({n} <= {width})")
        opq = faiss.OPQMatrix(width, m)
        opq.niter = config.opq_niter
        opq.verbose = False
        opq_pq = faiss.ProductQuantizer(width, m, config.opq_bits)
        opq_pq.cp = _clustering_parameters(config, n, ksub)
        opq.pq = opq_pq  # keep a Python reference: faiss does not own it
        opq.train(padded)
        rotation = faiss.vector_to_array(opq.A).reshape(width, width).astype(np.float32)
        rotated = np.ascontiguousarray(padded @ rotation.T)
        pq = faiss.ProductQuantizer(width, m, config.opq_bits)
        pq.cp = _clustering_parameters(config, n, ksub)
        pq.train(rotated)
        pq_cents = faiss.vector_to_array(pq.centroids).reshape(m, ksub, width // m)
        pq_cents = pq_cents.astype(np.float32)
        dsub = width // m
        for j in range(m):
            sub = np.ascontiguousarray(rotated[:, j * dsub : (j + 1) * dsub])
            pq_cents[j], codes[:, len(rq) + j] = _fit_level(
                sub, pq_cents[j], _capacity(config, n, ksub), config.balance_iters
            )
            bar.update()
    bar.close()
    return RqOpqQuantizer(rq, rotation, pq_cents, dim), codes


# --------------------------------------------------------------------------- collab signal


def cooccurrence_embedding(
    histories: Sequence[Sequence[int]], n_items: int, dim: int, seed: int = 0
) -> np.ndarray:
    """Low-rank PPMI embedding of item co-occurrence within each (training) history.

    Rows are L2-normalised; items that never co-occur get a zero row.
    """
    rows: list[int] = []
    cols: list[int] = []
    for history in histories:
        unique = sorted(set(history))
        for i, a in enumerate(unique):
            for b in unique[i + 1 :]:
                rows += [a, b]
                cols += [b, a]
    if not rows:
        return np.zeros((n_items, dim), dtype=np.float32)
    counts = coo_matrix(
        (np.ones(len(rows), dtype=np.float64), (np.asarray(rows), np.asarray(cols))),
        shape=(n_items, n_items),
    ).tocsr()
    counts.sum_duplicates()
    total = counts.sum()
    marg = np.asarray(counts.sum(axis=1)).ravel()
    coo = counts.tocoo()
    pmi = np.log(coo.data * total / (marg[coo.row] * marg[coo.col]))
    keep = pmi > 0
    ppmi = csr_matrix((pmi[keep], (coo.row[keep], coo.col[keep])), shape=(n_items, n_items))
    k = min(dim, n_items - 2)
    rng = np.random.default_rng(seed)
    v0 = rng.standard_normal(n_items)
    u, s, _ = svds(ppmi, k=k, v0=v0)
    emb = np.zeros((n_items, dim), dtype=np.float32)
    emb[:, :k] = (u * np.sqrt(s)[None, :]).astype(np.float32)
    emb[np.diff(ppmi.indptr) == 0] = 0.0  # no positive association: no signal (not noise)
    norms = np.linalg.norm(emb, axis=1, keepdims=True)
    return np.where(norms > 0, emb / np.maximum(norms, 1e-12), 0.0).astype(np.float32)


def fuse(text: np.ndarray, collab: np.ndarray | None, weight: float) -> np.ndarray:
    """Concatenate text and collaborative vectors with weights sqrt(1-w), sqrt(w)."""
    if collab is None or weight <= 0.0:
        return np.ascontiguousarray(text, dtype=np.float32)
    return np.ascontiguousarray(
        np.concatenate([math.sqrt(1 - weight) * text, math.sqrt(weight) * collab], axis=1),
        dtype=np.float32,
    )


# --------------------------------------------------------------------------- collisions


@dataclass(slots=True)
class Resolution:
    codes: np.ndarray
    moved_items: list[int] = field(default_factory=list)
    moved_two_levels: list[int] = field(default_factory=list)


def resolve_collisions(
    codes: np.ndarray,
    last_costs: np.ndarray,
    prev_costs: np.ndarray | None = None,
) -> Resolution:
    """Give every item a unique SID by reassigning last-level codes at minimum total cost.

    ``last_costs`` (N, K_last): cost of each last-level code per item (squared distance of
    the item's last-level target to each centroid). In every group of items sharing a
    full SID the cheapest stays; the others are assigned jointly, per prefix, to unused
    last-level codes (Hungarian algorithm). ``prev_costs`` (N, K_prev) enables a fallback
    for a prefix whose last level is full: those items get a fresh (prev, last) pair.
    """
    codes = np.array(codes, dtype=np.int32, copy=True)
    n, depth = codes.shape
    k_last = last_costs.shape[1]
    result = Resolution(codes)
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for row in range(n):
        groups[tuple(codes[row, :-1].tolist())].append(row)
    overflow: list[int] = []
    for rows in groups.values():
        by_code: dict[int, list[int]] = defaultdict(list)
        for row in rows:
            by_code[int(codes[row, -1])].append(row)
        if len(by_code) == len(rows):
            continue
        movers: list[int] = []
        for members in by_code.values():
            if len(members) > 1:
                ordered = sorted(members, key=lambda r: (last_costs[r, codes[r, -1]], r))
                movers += ordered[1:]
        free = np.array(sorted(set(range(k_last)) - set(by_code)), dtype=np.int64)
        movers.sort()
        if len(movers) > len(free):
            # The last level of this prefix is full: the surplus movers change two levels.
            overflow += movers[len(free) :]
            movers = movers[: len(free)]
        if not movers:
            continue
        cost = last_costs[np.array(movers)][:, free]
        r_idx, c_idx = linear_sum_assignment(cost)
        for r, c in zip(r_idx, c_idx, strict=True):
            codes[movers[r], -1] = free[c]
            result.moved_items.append(movers[r])
    if overflow:
        if prev_costs is None or depth < 2:
            raise ValueError(f"{len(overflow)} items cannot get a unique SID: codebooks too small")
        _resolve_two_levels(codes, overflow, last_costs, prev_costs)
        result.moved_two_levels = sorted(overflow)
        result.moved_items += overflow
    result.moved_items.sort()
    return result


def _resolve_two_levels(
    codes: np.ndarray, rows: list[int], last_costs: np.ndarray, prev_costs: np.ndarray
) -> None:
    """Assign overflow items a free (prev, last) pair under their (depth-2) prefix."""
    k_prev, k_last = prev_costs.shape[1], last_costs.shape[1]
    by_prefix: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for row in rows:
        by_prefix[tuple(codes[row, :-2].tolist())].append(row)
    for prefix, movers in by_prefix.items():
        same = np.all(codes[:, :-2] == np.array(prefix, dtype=np.int32), axis=1)
        same[movers] = False
        used = set((codes[same, -2] * k_last + codes[same, -1]).tolist())
        cost = prev_costs[movers][:, :, None] + last_costs[movers][:, None, :]
        cost = cost.reshape(len(movers), k_prev * k_last)
        if used:
            cost[:, sorted(used)] = _BIG
        r_idx, c_idx = linear_sum_assignment(cost)
        if len(r_idx) < len(movers) or np.any(cost[r_idx, c_idx] >= _BIG):
            raise ValueError(f"prefix {prefix}: codebooks too small for unique SIDs")
        for r, c in zip(r_idx, c_idx, strict=True):
            codes[movers[r], -2], codes[movers[r], -1] = divmod(int(c), k_last)


# --------------------------------------------------------------------------- statistics


def level_stats(codes: np.ndarray, codebook_sizes: Sequence[int]) -> list[dict[str, float]]:
    """Per level: codebook size, codes used, utilisation, token entropy (bits, normalised)."""
    out: list[dict[str, float]] = []
    for level, size in enumerate(codebook_sizes):
        counts = np.bincount(codes[:, level], minlength=size).astype(np.float64)
        p = counts[counts > 0] / counts.sum()
        entropy = float(-(p * np.log2(p)).sum())
        out.append(
            {
                "level": level,
                "codebook_size": int(size),
                "used": int((counts > 0).sum()),
                "utilisation": float((counts > 0).sum() / size),
                "entropy_bits": round(entropy, 4),
                "normalised_entropy": round(entropy / math.log2(size), 4) if size > 1 else 0.0,
                "distinct_prefixes": len({tuple(r) for r in codes[:, : level + 1].tolist()}),
            }
        )
    return out


def sid_stats(codes: np.ndarray, codebook_sizes: Sequence[int]) -> dict[str, Any]:
    """Distinctness and per-level statistics of one set of SIDs."""
    counts = Counter(tuple(r) for r in codes.tolist())
    n = len(codes)
    colliding = sum(c for c in counts.values() if c > 1)
    return {
        "items": n,
        "depth": int(codes.shape[1]),
        "codebook_sizes": [int(k) for k in codebook_sizes],
        "vocabulary": int(sum(codebook_sizes)),
        "distinct": len(counts),
        "distinct_ratio": round(len(counts) / n, 6) if n else 0.0,
        "colliding_items": colliding,
        "max_items_per_sid": max(counts.values()) if counts else 0,
        "levels": level_stats(codes, codebook_sizes),
    }


def reconstruction_error(x: np.ndarray, x_hat: np.ndarray) -> dict[str, float]:
    """Mean squared error per vector and relative to the mean squared norm."""
    err = ((x - x_hat) ** 2).sum(1)
    return {
        "mse": round(float(err.mean()), 6),
        "relative": round(float(err.mean() / max((x * x).sum(1).mean(), 1e-12)), 6),
    }


# --------------------------------------------------------------------------- build


@dataclass(slots=True)
class SidResult:
    codes: np.ndarray  # int32 (N, L), unique rows when resolve_collisions
    raw_codes: np.ndarray  # before collision resolution
    quantizer: RqOpqQuantizer
    config: SidConfig
    report: dict[str, Any]

    @property
    def codebook_sizes(self) -> tuple[int, ...]:
        return self.config.codebook_sizes

    def meta(self, source: str) -> dict[str, Any]:
        return {
            "codebook_sizes": list(self.codebook_sizes),
            "method": "rq-opq" + ("+zcr" if self.config.resolve_collisions else ""),
            "source": source,
            "depth": self.config.depth,
            "config": asdict(self.config),
        }


def build_semantic_ids(
    text_embeddings: np.ndarray,
    config: SidConfig = SidConfig(),
    train_histories: Sequence[Sequence[int]] | None = None,
) -> SidResult:
    """Quantise item embeddings into unique semantic IDs and report how well it went."""
    collab = None
    if config.collab_weight > 0:
        if train_histories is None:
            raise ValueError("collab_weight > 0 needs the training histories")
        collab = cooccurrence_embedding(
            train_histories, len(text_embeddings), config.collab_dim, config.seed
        )
    x = fuse(text_embeddings, collab, config.collab_weight)
    quantizer, raw = fit_rq_opq(x, config)
    targets = quantizer.level_targets(x, raw)
    depth = config.depth
    last_costs = _sq_dists(targets[-1], quantizer.level_centroids(depth - 1))
    prev_costs = (
        _sq_dists(targets[-2], quantizer.level_centroids(depth - 2)) if depth >= 2 else None
    )
    if config.resolve_collisions:
        resolution = resolve_collisions(raw, last_costs, prev_costs)
    else:
        resolution = Resolution(raw.copy())
    codes = resolution.codes
    report: dict[str, Any] = {
        "method": config.label(),
        "config": asdict(config),
        "input_dim": int(x.shape[1]),
        "before_resolution": sid_stats(raw, config.codebook_sizes),
        "after_resolution": sid_stats(codes, config.codebook_sizes),
        "moved_items": len(resolution.moved_items),
        "moved_two_levels": len(resolution.moved_two_levels),
        "reconstruction_error_before": reconstruction_error(x, quantizer.decode(raw)),
        "reconstruction_error_after": reconstruction_error(x, quantizer.decode(codes)),
        "counter_token_appended": False,
    }
    if collab is not None:
        report["items_without_collab_signal"] = int((np.abs(collab).sum(1) == 0).sum())
    return SidResult(codes, raw, quantizer, config, report)


def save_sids(result: SidResult, sids_dir: Path, source: str) -> None:
    """Write codes.npy, codebooks.npz, meta.json and report.json into ``sids_dir``."""
    sids_dir.mkdir(parents=True, exist_ok=True)
    np.save(sids_dir / "codes.npy", result.codes.astype(np.int32), allow_pickle=False)
    result.quantizer.save(sids_dir / "codebooks.npz")
    (sids_dir / "meta.json").write_text(json.dumps(result.meta(source), indent=2) + "\n")
    (sids_dir / "report.json").write_text(json.dumps(result.report, indent=2) + "\n")


# --------------------------------------------------------------------------- published indexes

_TOKEN = re.compile(r"^<([a-z])_(\d+)>$")


def load_published_index(
    path: Path, items: Sequence[str] | Sequence[Any], codebook_size: int | None = None
) -> tuple[np.ndarray, tuple[int, ...]]:
    """Codes of a published ``Scientific.index.json`` row-aligned to ``items``.

    ``items`` are item ids (or objects with an ``item_id``) in items.parquet order.
    Token ``"<c_17>"`` is level c (the third), code 17. Codebook sizes are
    ``codebook_size`` when given, else the next power of two above the largest code
    seen at each level (the published tokenizers use 256-code books).
    """
    raw = json.loads(Path(path).read_text())
    if not isinstance(raw, Mapping):
        raise ValueError(f"{path}: expected an object of item id -> tokens")
    ids = [str(getattr(i, "item_id", i)) for i in items]
    missing = [i for i in ids if i not in raw]
    if missing:
        raise ValueError(f"{path}: {len(missing)} items have no SID, e.g. {missing[:5]}")
    depth: int | None = None
    codes: list[list[int]] = []
    for item_id in ids:
        tokens = raw[item_id]
        if depth is None:
            depth = len(tokens)
        if len(tokens) != depth:
            raise ValueError(f"{path}: item {item_id} has {len(tokens)} tokens, expected {depth}")
        row: list[int] = []
        for level, token in enumerate(tokens):
            match = _TOKEN.match(str(token))
            if match is None or ord(match.group(1)) - ord("a") != level:
                raise ValueError(f"{path}: item {item_id}: bad token {token!r} at level {level}")
            row.append(int(match.group(2)))
        codes.append(row)
    array = np.asarray(codes, dtype=np.int32).reshape(len(ids), depth or 0)
    if codebook_size is not None:
        if array.size and array.max() >= codebook_size:
            raise ValueError(f"{path}: code {array.max()} >= codebook size {codebook_size}")
        sizes = (codebook_size,) * array.shape[1]
    else:
        sizes = tuple(1 << int(m).bit_length() if m > 0 else 1 for m in array.max(axis=0))
        sizes = tuple(max(s, 1) for s in sizes)
    return array, sizes
