"""How training and serving scale with the item count: the real catalog against one three
times larger, in one run.

For each catalog the generator is trained for one epoch (``models_export.generator.train``,
``--preset``, ONNX export included) and its exported graphs then decode batch-1 requests
(beam 20, 10 results) through ``OnnxSidGenerator``, the retrieval service's decode path
(decoder steps on 1 ONNX Runtime thread, the encoder on 2, as the service runs them).
Reported: training seconds of the epoch (sampling, batching, forward/backward; not the
validation after it), decode latency p50/p99, and the x3 / x1 ratios.

The REAL catalog is the dataset of the environment with a published SID index
(``loadtest.benchmarks.real_data``). The x3 catalog is SYNTHETIC, made from it
(:func:`replicate`): every item has three replicas (rows ``i``, ``N + i``, ``2N + i``; same
texts), replica 0 with the real SID, replicas 1 and 2 with the real first-level code and
each lower level's code mapped through a random permutation of the codebook (one per
replica and level: every coarse cluster holds three times the items, with the same
level-wise code frequencies); every user has three replicas whose histories and targets
name the same replica of each item. Requests: test users' last 20 items (training history
+ validation target) and the DERIVED category query of their test target (Ai et al. SIGIR
2017; recommendation mode where the item has none); on the x3 catalog, each request goes to
a random replica of its user.

Usage::

    python -m loadtest.benchmarks.scale_bench [--preset serving] [--requests 200]
        [--out docs/results/scale_benchmark]
    python -m loadtest.benchmarks.scale_bench --smoke   # tiny slice, < 30 s, writes nothing
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from loadtest.benchmarks.real_data import DEFAULT_SIDS, real_training_data
from models_export.generator.dataset import TrainingData, sample_epoch
from models_export.generator.model import PRESETS
from models_export.generator.train import TrainSettings, train
from models_export.result_files import write_results
from services.retrieval.onnx_generator import OnnxSidGenerator
from services.retrieval.trie import SidTrie

IntArray = npt.NDArray[np.int64]
BEAM = 20
K = 10
HISTORY = 20


@dataclasses.dataclass(slots=True)
class Request:
    """One batch-1 decode (an ``OnnxSidGenerator`` job)."""

    query: str
    history_rows: IntArray
    trie: SidTrie
    beam_width: int = BEAM
    n_results: int = K


@dataclasses.dataclass(slots=True)
class CatalogResult:
    catalog: str
    items: int
    distinct_sids: int
    users: int
    examples_per_epoch: int
    train_epoch_s: float
    train_call_s: float  # the whole train() call: vocabulary, epoch, validation, export
    decode_ms_p50: float
    decode_ms_p99: float
    requests: int


def replicate(data: TrainingData, factor: int, seed: int) -> TrainingData:
    """``data`` with ``factor`` replicas of every item and user (see the module docstring)."""
    n, depth = data.codes.shape
    rng = np.random.default_rng(seed)
    codes = [data.codes]
    for _ in range(1, factor):
        copy = data.codes.copy()
        for level in range(1, depth):
            copy[:, level] = rng.permutation(data.codebook_sizes[level])[copy[:, level]]
        codes.append(copy)

    def rows(r: int, items: npt.NDArray[np.int64]) -> IntArray:
        return (items + r * n).astype(np.int64)

    replicas = range(factor)
    suffix = ["" if r == 0 else f"~{r}" for r in replicas]
    return TrainingData(
        item_ids=[i + s for s in suffix for i in data.item_ids],
        item_texts=data.item_texts * factor,
        vocab_texts=data.vocab_texts * factor,
        category_queries=data.category_queries * factor,
        title_queries=data.title_queries * factor,
        codes=np.concatenate(codes),
        codebook_sizes=data.codebook_sizes,
        user_ids=[u + s for s in suffix for u in data.user_ids],
        train_histories=[rows(r, h) for r in replicas for h in data.train_histories],
        valid_targets=np.concatenate([rows(r, data.valid_targets) for r in replicas]),
        test_targets=np.concatenate([rows(r, data.test_targets) for r in replicas]),
    )


def shrink(data: TrainingData, n_items: int, n_users: int) -> TrainingData:
    """The first ``n_items`` items and up to ``n_users`` users whose targets are among them
    (histories cut to those items): a slice for the smoke run."""
    keep_users = [
        u
        for u in range(len(data.user_ids))
        if data.valid_targets[u] < n_items and data.test_targets[u] < n_items
    ][:n_users]
    return TrainingData(
        item_ids=data.item_ids[:n_items],
        item_texts=data.item_texts[:n_items],
        vocab_texts=data.vocab_texts,
        category_queries=data.category_queries[:n_items],
        title_queries=data.title_queries[:n_items],
        codes=data.codes[:n_items],
        codebook_sizes=data.codebook_sizes,
        user_ids=[data.user_ids[u] for u in keep_users],
        train_histories=[
            data.train_histories[u][data.train_histories[u] < n_items] for u in keep_users
        ],
        valid_targets=data.valid_targets[keep_users],
        test_targets=data.test_targets[keep_users],
    )


def requests(
    data: TrainingData, users: IntArray, replicas: int, trie: SidTrie, seed: int
) -> list[Request]:
    """Batch-1 requests of test ``users`` of the real catalog, each sent to a random one of
    its ``replicas`` (user ``u`` of replica ``r`` is user ``r * U + u``)."""
    rng = np.random.default_rng(seed)
    n_users = len(data.user_ids) // replicas
    out = []
    for u in users.tolist():
        user = int(rng.integers(replicas)) * n_users + u
        history = np.append(data.train_histories[user], data.valid_targets[user])[-HISTORY:]
        query = data.category_queries[int(data.test_targets[user])] or ""
        out.append(Request(query, history.astype(np.int64), trie))
    return out


def decode_latency(
    generator: OnnxSidGenerator, jobs: Sequence[Request], warm_up: int
) -> npt.NDArray[np.float64]:
    """Milliseconds per batch-1 decode of each of ``jobs`` (after ``warm_up`` untimed ones)."""
    for job in jobs[:warm_up]:
        generator.decode([job])
    out = []
    for job in jobs:
        start = time.perf_counter()
        generator.decode([job])
        out.append((time.perf_counter() - start) * 1000)
    return np.asarray(out)


def run_catalog(
    name: str,
    data: TrainingData,
    replicas: int,
    settings: TrainSettings,
    users: IntArray,
    warm_up: int,
    seed: int,
) -> CatalogResult:
    """Train one epoch on ``data``, then time batch-1 decodes of the exported generator."""
    with tempfile.TemporaryDirectory(prefix="gensearch-scale-") as tmp:
        start = time.perf_counter()
        result = train(data, settings, Path(tmp), DEFAULT_SIDS, progress=False)
        train_call_s = time.perf_counter() - start
        [epoch] = result.meta["history"]
        trie = SidTrie.build(data.codes, data.codebook_sizes)
        generator = OnnxSidGenerator.from_artifact(
            lambda rel: Path(tmp) / rel, trie, data.codes, intra_op_threads=1, encoder_threads=2
        )
        jobs = requests(data, users, replicas, trie, seed)
        latency = decode_latency(generator, jobs, warm_up)
    return CatalogResult(
        catalog=name,
        items=data.num_items,
        distinct_sids=len(np.unique(data.codes, axis=0)),
        users=len(data.user_ids),
        examples_per_epoch=len(sample_epoch(data, settings.mix, np.random.default_rng(seed))),
        train_epoch_s=float(epoch["train_seconds"]),
        train_call_s=train_call_s,
        decode_ms_p50=float(np.percentile(latency, 50)),
        decode_ms_p99=float(np.percentile(latency, 99)),
        requests=len(latency),
    )


def render(results: list[CatalogResult], meta: dict[str, Any]) -> str:
    base, big = results[0], results[-1]
    rows = [
        ("items", base.items, big.items, "{:,}"),
        ("distinct SIDs", base.distinct_sids, big.distinct_sids, "{:,}"),
        ("users", base.users, big.users, "{:,}"),
        ("training examples per epoch", base.examples_per_epoch, big.examples_per_epoch, "{:,}"),
        ("training s per epoch", base.train_epoch_s, big.train_epoch_s, "{:.1f}"),
        ("train() call s (vocab, epoch, validation, export)", base.train_call_s,
         big.train_call_s, "{:.1f}"),
        ("decode ms p50 (beam 20, batch 1)", base.decode_ms_p50, big.decode_ms_p50, "{:.2f}"),
        ("decode ms p99 (beam 20, batch 1)", base.decode_ms_p99, big.decode_ms_p99, "{:.2f}"),
    ]  # fmt: skip
    lines = [
        "# Scale with the item count: training and decoding, real vs x3 catalog",
        "",
        f"- Command: `{meta['command']}`",
        f"- Machine: {meta['machine']}",
        f"- Preset `{meta['preset']}`, 1 epoch, batch {meta['batch_size']}, "
        f"{meta['torch_threads']} torch threads; decode: {meta['requests']} requests per "
        f"catalog after {meta['warm_up']} warm-up ones, ONNX Runtime 1 decoder thread, "
        "2 encoder threads.",
        f"- `{base.catalog}`: the REAL catalog with SIDs `{DEFAULT_SIDS}`. "
        f"`{big.catalog}`: SYNTHETIC, replicas of the real items and users "
        "(`loadtest/benchmarks/scale_bench.py`, `replicate`).",
        "",
        f"| | {base.catalog} | {big.catalog} | ratio |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, a, b, fmt in rows:
        ratio = f"{b / a:.2f}" if a else "n/a"
        lines.append(f"| {label} | {fmt.format(a)} | {fmt.format(b)} | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="serving")
    parser.add_argument("--factor", type=int, default=3, help="replicas of the catalog")
    parser.add_argument("--requests", type=int, default=200, help="timed decodes per catalog")
    parser.add_argument("--warm-up", type=int, default=10)
    parser.add_argument("--valid-users", type=int, default=100, help="validation after the epoch")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--smoke", action="store_true", help="a tiny slice, tiny model; no file")
    parser.add_argument("--out", type=Path, default=Path("docs/results/scale_benchmark"))
    parser.add_argument("--no-write", action="store_true", help="print only")
    args = parser.parse_args(argv)
    command = "python -m loadtest.benchmarks.scale_bench " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    data = real_training_data()
    settings = TrainSettings(
        preset=args.preset,
        epochs=1,
        valid_users=args.valid_users,
        threads=args.threads,
        seed=args.seed,
        restore_best=False,
    )
    n_requests, warm_up = args.requests, args.warm_up
    if args.smoke:
        data = shrink(data, n_items=120, n_users=60)
        settings = dataclasses.replace(
            settings,
            preset="tiny",
            batch_size=32,
            valid_users=4,
            valid_beam=5,
            vocab_size=300,
            threads=1,
        )
        n_requests, warm_up = min(n_requests, 8), min(warm_up, 2)
    rng = np.random.default_rng(args.seed)
    users = rng.choice(len(data.user_ids), size=min(n_requests, len(data.user_ids)), replace=False)
    results = []
    for factor in (1, args.factor):
        catalog = data if factor == 1 else replicate(data, factor, args.seed)
        name = "real" if factor == 1 else f"x{factor} (synthetic)"
        results.append(run_catalog(name, catalog, factor, settings, users, warm_up, args.seed))
        r = results[-1]
        print(
            f"{r.catalog}: {r.items:,} items, epoch {r.train_epoch_s:.1f} s, "
            f"decode p50 {r.decode_ms_p50:.2f} ms p99 {r.decode_ms_p99:.2f} ms",
            flush=True,
        )
    meta: dict[str, Any] = {
        "command": command.strip(),
        "machine": f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
        f"Python {platform.python_version()}, no GPU",
        "preset": settings.preset,
        "batch_size": settings.batch_size,
        "torch_threads": settings.threads,
        "requests": n_requests,
        "warm_up": warm_up,
        "smoke": args.smoke,
    }
    markdown = render(results, meta)
    print(markdown)
    if not (args.no_write or args.smoke):
        payload = {"meta": meta, "results": [dataclasses.asdict(r) for r in results]}
        write_results(args.out, payload, markdown)


if __name__ == "__main__":
    main()
