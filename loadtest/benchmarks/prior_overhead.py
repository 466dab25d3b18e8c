"""What the co-visitation decoding prior costs a history-only request.

``python -m loadtest.benchmarks.prior_overhead [--queries 300] [--beam 20] [--threads 1]``

Batch-1 recommendation requests (test users' real histories, no query text) on the CURRENT
artifact's generator, each decoded twice in alternation, without and with the prior (its
per-node bonus computed per request, as the service does): prints p50 / mean of both and
their ratio, measured in the same run. Needs an artifact whose generator step fitted the
prior (``generator/covisit*``); ``--weight`` overrides the fitted weight (> 0).

``python -m loadtest.benchmarks.prior_overhead --node-bonus [--sizes 0 100000 1000000]``

The per-request bonus alone, dense (``CovisitPrior.dense_node_bonus``: every trie node)
against sparse (``CovisitPrior.node_bonus``: the co-visited items' paths), without a model
or an artifact. Size 0 is the REAL catalog (a published SID index, the co-visitation table
of the real training histories, test users' request histories); other sizes are SYNTHETIC
(see :func:`synthetic_case`). Writes ``docs/results/prior_sparse.{json,md}``.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from loadtest.benchmarks.generative_bench import current_subject, make_search
from loadtest.benchmarks.real_data import DEFAULT_SIDS, real_training_data
from loadtest.benchmarks.trie_bench import synthetic_codes
from models_export.evaluation.data import load_from_dir
from models_export.result_files import write_results
from services.retrieval.beam_search import SearchOptions, SparseNodeBonus
from services.retrieval.covisit import SETTINGS_FILE, TABLE_FILE, CovisitPrior, CovisitTable
from services.retrieval.trie import SidTrie

#: the served prior's request history: the last 20 items (``CovisitPrior.last_n``)
HISTORY = 20
BEAM = 20


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--beam", type=int, default=BEAM)
    parser.add_argument("--threads", type=int, default=1, help="ORT intra-op threads")
    parser.add_argument("--weight", type=float, default=None, help="prior weight override")
    parser.add_argument(
        "--node-bonus", action="store_true", help="dense vs sparse bonus only (no artifact)"
    )
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=[0, 100_000, 1_000_000], help="0 = real"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/results/prior_sparse"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    if args.node_bonus:
        command = "python -m loadtest.benchmarks.prior_overhead " + shlex.join(
            sys.argv[1:] if argv is None else list(argv)
        )
        node_bonus_bench(args, command)
    else:
        end_to_end(parser, args)


def end_to_end(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Decode with and without the prior on the CURRENT artifact (the default mode)."""
    version_dir, subject, _ = current_subject("serving", args.threads)
    prior = CovisitPrior.from_files(version_dir / TABLE_FILE, version_dir / SETTINGS_FILE)
    weight = prior.weight if args.weight is None else args.weight
    if weight <= 0:
        parser.error("the artifact's prior weight is 0: pass --weight to measure one")
    prior = dataclasses.replace(prior, weight=weight)
    data = load_from_dir(version_dir, with_embeddings=False)
    rng = np.random.default_rng(7)
    n_users = len(data.user_ids)
    users = rng.choice(n_users, size=min(args.queries, n_users), replace=False)
    histories = [np.asarray(data.history("test", int(u))[-20:], np.int64) for u in users]
    search = make_search(subject, constrained=True)
    n_rows = len(subject.codes)

    def once(history: np.ndarray, fused: bool) -> float:
        start = time.perf_counter()
        bonus = prior.node_bonus(search.trie, history.tolist(), n_rows) if fused else None
        batch = subject.encoder.encode([None], [history])
        search.search(batch, [SearchOptions(beam_width=args.beam, k=10, node_bonus=bonus)])
        return time.perf_counter() - start

    for i in range(20):  # warm-up, both paths
        once(histories[i % len(histories)], i % 2 == 0)
    plain: list[float] = []
    fused: list[float] = []
    for i, h in enumerate(histories):  # alternate the order: neither side always runs first
        pair = (False, True) if i % 2 == 0 else (True, False)
        for with_prior in pair:
            (fused if with_prior else plain).append(once(h, with_prior))
    p_plain, p_fused = np.median(plain) * 1000, np.median(fused) * 1000
    print(
        f"{len(histories)} history-only test requests, batch 1, beam {args.beam}, "
        f"{args.threads} ORT threads, prior weight {weight:g}: "
        f"without prior p50 {p_plain:.2f} ms (mean {np.mean(plain) * 1000:.2f}), "
        f"with prior p50 {p_fused:.2f} ms (mean {np.mean(fused) * 1000:.2f}); "
        f"ratio p50 {p_fused / p_plain:.3f}, mean {np.mean(fused) / np.mean(plain):.3f}"
    )


@dataclasses.dataclass(slots=True)
class BonusCase:
    """One catalog: its trie, a prior over it and request histories."""

    name: str
    trie: SidTrie
    prior: CovisitPrior
    histories: list[list[int]]


@dataclasses.dataclass(slots=True)
class BonusResult:
    case: str
    items: int
    nodes: int
    requests: int
    covisited_items_p50: float
    sparse_nodes_p50: float
    dense_ms_p50: float
    dense_ms_p99: float
    sparse_ms_p50: float
    sparse_ms_p99: float
    backoff_once_ms: float
    read_dense_us_p50: float
    read_sparse_us_p50: float
    max_abs_diff: float
    speedup_p50: float = dataclasses.field(init=False)

    def __post_init__(self) -> None:
        self.speedup_p50 = self.dense_ms_p50 / self.sparse_ms_p50


def real_case(requests: int, seed: int) -> BonusCase:
    """The real catalog: published SIDs, the table of the real TRAINING histories, and test
    users' request histories (training history + validation target, last ``HISTORY``)."""
    data = real_training_data()
    table = CovisitTable.from_histories(data.train_histories, data.num_items)
    rng = np.random.default_rng(seed)
    users = rng.choice(len(data.user_ids), size=min(requests, len(data.user_ids)), replace=False)
    histories = [
        [*data.train_histories[u].tolist(), int(data.valid_targets[u])][-HISTORY:] for u in users
    ]
    trie = SidTrie.build(data.codes, data.codebook_sizes)
    return BonusCase(f"real ({DEFAULT_SIDS})", trie, CovisitPrior(table, 1.0), histories)


def synthetic_case(n: int, real: BonusCase, seed: int) -> BonusCase:
    """SYNTHETIC, ``n`` items: ``trie_bench.synthetic_codes`` SIDs (4 levels of 256); each
    item's co-visitation row has as many entries as a random real item's row, with values
    drawn from the real rows' values and columns uniform over the catalog (spread over the
    trie: no shared paths to profit from); popularity counts drawn from the real ones;
    request histories keep the real requests' lengths, items drawn by popularity."""
    rng = np.random.default_rng(seed)
    codes = synthetic_codes(n, (256, 256, 256, 256), seed)
    matrix = real.prior.table.matrix
    lengths = rng.choice(np.diff(matrix.indptr), size=n)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    columns = rng.integers(0, n, int(indptr[-1]))
    values = rng.choice(matrix.data, size=len(columns))
    table = CovisitTable(
        sp.csr_matrix((values, columns, indptr), shape=(n, n)),
        rng.choice(real.prior.table.popularity, size=n),
    )
    weights = table.popularity + 1.0
    histories = [
        rng.choice(n, size=len(h), p=weights / weights.sum()).tolist() for h in real.histories
    ]
    trie = SidTrie.build(codes, (256, 256, 256, 256))
    return BonusCase(f"synthetic {n:,}", trie, CovisitPrior(table, 1.0), histories)


def beam_edges(trie: SidTrie, rng: np.random.Generator) -> list[npt.NDArray[np.int64]]:
    """Per level, the children a beam of ``BEAM`` expands (of ``BEAM`` random nodes at that
    depth, of the root at the first): the nodes whose bonus a search reads."""
    out = []
    nodes = trie.root(1)
    for level in range(trie.depth):
        out.append(trie.edges(level, nodes)[2])
        if level + 1 < trie.depth:
            children = out[-1]
            nodes = rng.choice(children, size=min(BEAM, len(children)), replace=False)
    return out


def _ms(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return (time.perf_counter() - start) * 1000, value


def _read_dense(bonus: npt.NDArray[np.float32], edges: list[npt.NDArray[np.int64]]) -> None:
    for e in edges:
        bonus[e]


def _read_sparse(bonus: SparseNodeBonus, edges: list[npt.NDArray[np.int64]]) -> None:
    for e in edges:
        bonus.at(e)


def measure(case: BonusCase, seed: int) -> BonusResult:
    """Dense and sparse bonus of every request history, in alternating order; the first
    sparse call pays the per-trie back-off (reported apart, then cached)."""
    trie, prior, rows = case.trie, case.prior, len(case.trie)
    edges = beam_edges(trie, np.random.default_rng(seed))
    backoff_ms, _ = _ms(lambda: prior.node_bonus(trie, case.histories[0], rows))
    dense_ms, sparse_ms, read_dense, read_sparse = [], [], [], []
    covisited, path_nodes, diff = [], [], 0.0
    for i, history in enumerate(case.histories):
        dense_fn = partial(prior.dense_node_bonus, trie, history, rows)
        sparse_fn = partial(prior.node_bonus, trie, history, rows)
        if i % 2:
            t_sparse, sparse = _ms(sparse_fn)
            t_dense, dense = _ms(dense_fn)
        else:
            t_dense, dense = _ms(dense_fn)
            t_sparse, sparse = _ms(sparse_fn)
        if dense is None or sparse is None:
            assert dense is None and sparse is None
            continue  # the history leads nowhere: no prior either way
        dense_ms.append(t_dense)
        sparse_ms.append(t_sparse)
        read_dense.append(_ms(partial(_read_dense, dense, edges))[0] * 1000)
        read_sparse.append(_ms(partial(_read_sparse, sparse, edges))[0] * 1000)
        covisited.append(len(prior.table.sparse_scores(history, prior.decay, prior.last_n)[0]))
        path_nodes.append(len(sparse.nodes))
        read = np.concatenate(edges)
        diff = max(diff, float(np.max(np.abs(sparse.at(read) - dense[read]))))
    return BonusResult(
        case=case.name,
        items=len(trie),
        nodes=trie.num_nodes,
        requests=len(dense_ms),
        covisited_items_p50=float(np.median(covisited)),
        sparse_nodes_p50=float(np.median(path_nodes)),
        dense_ms_p50=float(np.median(dense_ms)),
        dense_ms_p99=float(np.percentile(dense_ms, 99)),
        sparse_ms_p50=float(np.median(sparse_ms)),
        sparse_ms_p99=float(np.percentile(sparse_ms, 99)),
        backoff_once_ms=backoff_ms,
        read_dense_us_p50=float(np.median(read_dense)),
        read_sparse_us_p50=float(np.median(read_sparse)),
        max_abs_diff=diff,
    )


def render(results: list[BonusResult], meta: dict[str, Any]) -> str:
    lines = [
        "# Co-visitation prior: sparse vs dense per-request node bonus",
        "",
        "The per-request bonus of the co-visitation decoding prior "
        "(`services/retrieval/covisit.py`), without a model: dense "
        "(`CovisitPrior.dense_node_bonus`, the reference: the whole distribution and every "
        "trie node) against sparse (`CovisitPrior.node_bonus`, what the service sends: the "
        "nodes on the co-visited items' paths over a per-trie back-off computed once).",
        "",
        f"- Command: `{meta['command']}`",
        f"- Machine: {meta['machine']}",
        f"- Requests per catalog: {meta['requests']} history-only requests (last "
        f"{HISTORY} items), seed {meta['seed']}; prior weight 1, the other settings "
        "`CovisitPrior`'s defaults.",
        "- `real`: the real catalog (4,344 items, a published SID index, the table counted "
        "on the real training histories, test users' histories). `synthetic N`: SYNTHETIC "
        "SIDs (`trie_bench.synthetic_codes`) and a table whose rows have the real rows' sizes "
        "and values, columns uniform over the catalog (see `synthetic_case`).",
        "- read µs: reading the bonus at the edges a beam-20 search expands (the root's "
        "children, then the children of 20 nodes per level). max |diff|: sparse vs dense "
        "bonus on those edges, over all requests.",
        "- back-off once: the first sparse call on a trie (the per-trie back-off, cached).",
        "",
        "| catalog | items | nodes | co-visited items p50 | sparse nodes p50 | dense ms p50 "
        "| dense ms p99 | sparse ms p50 | sparse ms p99 | speed-up p50 | back-off once ms "
        "| read dense µs | read sparse µs | max abs diff |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.case} | {r.items:,} | {r.nodes:,} | {r.covisited_items_p50:.0f} "
            f"| {r.sparse_nodes_p50:.0f} | {r.dense_ms_p50:.3f} | {r.dense_ms_p99:.3f} "
            f"| {r.sparse_ms_p50:.3f} | {r.sparse_ms_p99:.3f} | {r.speedup_p50:.1f}x "
            f"| {r.backoff_once_ms:.1f} | {r.read_dense_us_p50:.1f} "
            f"| {r.read_sparse_us_p50:.1f} | {r.max_abs_diff:.1e} |"
        )
    return "\n".join(lines) + "\n"


def node_bonus_bench(args: argparse.Namespace, command: str) -> None:
    """``--node-bonus``: dense vs sparse bonus per request, real and synthetic catalogs."""
    seed = 0
    meta: dict[str, Any] = {
        "command": command.strip(),
        "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, numpy {np.__version__}, no GPU",
        "requests": args.queries,
        "seed": seed,
    }
    real = real_case(args.queries, seed)
    results = []
    for n in args.sizes:
        case = real if n == 0 else synthetic_case(n, real, seed)
        results.append(measure(case, seed))
        r = results[-1]
        print(
            f"{r.case}: dense p50 {r.dense_ms_p50:.3f} ms, sparse p50 {r.sparse_ms_p50:.3f} ms "
            f"({r.speedup_p50:.1f}x), back-off once {r.backoff_once_ms:.1f} ms",
            flush=True,
        )
    markdown = render(results, meta)
    print(markdown)
    if not args.no_write:
        payload = {"meta": meta, "results": [dataclasses.asdict(r) for r in results]}
        write_results(args.out, payload, markdown)


if __name__ == "__main__":
    main()
