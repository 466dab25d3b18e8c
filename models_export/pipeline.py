"""``python -m models_export artifacts``: build one versioned artifact directory.

The build is the list :data:`STEPS` of ``(name, "module:function")``; each function takes
the :class:`BuildContext` and returns a short summary string. To add a step (evaluation,
model training/export), add ONE line to :data:`STEPS`. A step writes its files under
``ctx.version_dir``, may add its settings to ``ctx.config[<name>]`` and its results to
``ctx.eval_results[<name>]`` (both go into the manifest), and reads what earlier steps
produced from ``ctx.version_dir`` (or from ``ctx.cache`` when they ran in this process).
``ctx.quick`` asks for smaller settings.

The input is any catalog + behaviour log in the shared JSON layout
(:mod:`models_export.dataset_files`); its name, files and sha256 are part of the config. A
log without a catalog has no item text (``ctx.has_text`` is False, recorded as
``config["has_text"]``): the text steps then skip themselves (no derived queries, no
MiniLM, no text encoder), the item vectors come from the log alone (co-occurrence PPMI-SVD)
and the generator learns recommendation only. A step that needs text checks
``ctx.has_text`` and returns a "skipped" summary.

The version is ``<UTC yyyymmdd-hhmmss>-<8 hex of the config hash>``. The manifest
(sha256 of every file) is written after the last step, then ``CURRENT`` is moved; a
failed build leaves a directory without a manifest, which no service will open.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from models_export import dataset_files, embeddings, ingest, queries, semantic_ids
from models_export.dataset_files import DatasetFiles
from services.common.artifacts import (
    MANIFEST_NAME,
    ArtifactRepository,
    set_current,
    write_manifest,
)
from services.common.config import artifact_root

StepFn = Callable[["BuildContext"], str]
BEHAVIOUR_SOURCE = "co-occurrence PPMI-SVD of train_history"

STEPS: list[tuple[str, str]] = [
    ("ingest", "models_export.pipeline:step_ingest"),
    ("queries", "models_export.pipeline:step_queries"),
    ("embeddings", "models_export.pipeline:step_embeddings"),
    ("semantic_ids", "models_export.pipeline:step_semantic_ids"),
    ("trie", "models_export.pipeline:step_trie"),
    ("lexical", "models_export.hybrid_step:step_lexical"),
    ("text_encoder", "models_export.export_text_encoder:step_text_encoder"),
    ("query_understanding", "models_export.query_understanding_step:step_query_understanding"),
    ("generator", "models_export.generator.pipeline_step:step_generator"),
    ("fusion", "models_export.hybrid_step:step_fusion"),
    ("ranking", "models_export.ranking.step:step_ranking"),
    ("rag", "models_export.rag.step:step_rag"),
    ("eval_baselines", "models_export.evaluation.pipeline_step:step_eval_baselines"),
    # GPU machines only (skips itself without TensorRT): keep it last, after every ONNX export
    ("tensorrt", "models_export.tensorrt_step:step_tensorrt"),
]
#: left out of quick builds: measurements and GPU engines, not what the stack needs to serve
QUICK_SKIPS: frozenset[str] = frozenset({"eval_baselines", "tensorrt"})


@dataclass(frozen=True, slots=True)
class BuildSettings:
    """What the built-in steps use; ``quick`` shrinks the expensive ones."""

    quick: bool
    text: embeddings.TextConfig
    embed: embeddings.EmbedConfig
    sids: semantic_ids.SidConfig

    @classmethod
    def for_mode(cls, quick: bool) -> BuildSettings:
        if quick:
            return cls(
                quick=True,
                text=embeddings.TextConfig(max_description_words=16),
                embed=embeddings.EmbedConfig(max_seq_length=96),
                sids=semantic_ids.SidConfig(kmeans_niter=10, opq_niter=8, balance_iters=1),
            )
        return cls(
            quick=False,
            text=embeddings.TextConfig(),
            embed=embeddings.EmbedConfig(),
            sids=semantic_ids.SidConfig(),
        )

    def to_config(self) -> dict[str, Any]:
        return {
            "build": "quick" if self.quick else "full",
            "text": asdict(self.text),
            "embed": asdict(self.embed),
            "sids": asdict(self.sids),
        }


@dataclass(slots=True)
class BuildContext:
    """Everything a step needs; steps communicate through files and ``cache``."""

    dataset: DatasetFiles
    root: Path
    version: str
    settings: BuildSettings
    config: dict[str, Any]
    eval_results: dict[str, Any] = field(default_factory=dict)
    cache: dict[str, Any] = field(default_factory=dict)

    @property
    def quick(self) -> bool:
        return self.settings.quick

    @property
    def has_text(self) -> bool:
        """False for a log-only dataset: steps that need item text skip themselves."""
        return bool(self.config.get("has_text", True))

    @property
    def version_dir(self) -> Path:
        return self.root / self.version

    def path(self, rel: str) -> Path:
        """``version_dir / rel`` with its parent directory created."""
        full = self.version_dir / rel
        full.parent.mkdir(parents=True, exist_ok=True)
        return full

    def items(self) -> list[ingest.Item]:
        if "items" not in self.cache:
            self.cache["items"] = ingest.read_items(self.version_dir / "tables")
        items: list[ingest.Item] = self.cache["items"]
        return items

    def users(self) -> list[ingest.UserSplit]:
        if "users" not in self.cache:
            self.cache["users"] = ingest.read_users(self.version_dir / "tables")
        users: list[ingest.UserSplit] = self.cache["users"]
        return users

    def item_embeddings(self) -> np.ndarray:
        if "item_embeddings" not in self.cache:
            self.cache["item_embeddings"] = np.load(
                self.version_dir / "embeddings" / "items.npy", allow_pickle=False
            )
        vectors: np.ndarray = self.cache["item_embeddings"]
        return vectors


# --------------------------------------------------------------------------- built-in steps


def step_ingest(ctx: BuildContext) -> str:
    """Validated items/users tables and the ingest report."""
    result = ingest.ingest_dataset(ctx.dataset, on_error="skip")
    ingest.write_tables(result, ctx.path("tables/items.parquet").parent)
    ctx.cache["items"], ctx.cache["users"] = result.items, result.users
    report = result.report
    ctx.eval_results["ingest"] = {k: v for k, v in report.to_dict().items() if k != "issues"}
    text = "" if ctx.has_text else "; no item file: items are the log's ids, without text"
    return f"{ctx.dataset.name}: {report.summary()}{text}"


def step_queries(ctx: BuildContext) -> str:
    """Derived (category and title) queries for every user's valid and test target; an
    empty table without item text (nothing to derive them from)."""
    if not ctx.has_text:
        empty = queries.QuerySet([], [], [])
        pq.write_table(empty.table(), ctx.path("tables/queries.parquet"))
        ctx.eval_results["queries"] = {"derived": True, "skipped": "no item text", "counts": {}}
        return "skipped (no item text): empty query table"
    query_set = queries.derive_queries(ctx.items(), ctx.users())
    pq.write_table(query_set.table(), ctx.path("tables/queries.parquet"))
    counts: dict[str, int] = {}
    for row in query_set.rows:
        key = f"{row['split']}/{row['kind']}"
        counts[key] = counts.get(key, 0) + 1
    ctx.eval_results["queries"] = {
        "derived": True,
        "protocol": "category: Ai et al. SIGIR 2017; title: 2-4 highest-IDF title words",
        "counts": counts,
        "targets_without_title_query": len(query_set.items_without_title_query),
        "targets_without_category_query": len(query_set.items_without_category_query),
    }
    return query_set.summary()


def train_histories_rows(ctx: BuildContext) -> list[list[int]]:
    """Every user's training history as item rows."""
    row = {item.item_id: i for i, item in enumerate(ctx.items())}
    return [[row[i] for i in user.train_history] for user in ctx.users()]


def step_embeddings(ctx: BuildContext) -> str:
    """all-MiniLM-L6-v2 item embeddings (cached by inputs and model); without item text,
    the co-occurrence PPMI-SVD embedding of the training histories instead."""
    if not ctx.has_text:
        return _behaviour_embeddings(ctx)
    result = embeddings.embed_items(ctx.items(), ctx.settings.text, ctx.settings.embed)
    np.save(ctx.path("embeddings/items.npy"), result.vectors, allow_pickle=False)
    meta = result.meta(ctx.settings.text, ctx.settings.embed)
    ctx.path("embeddings/meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    ctx.cache["item_embeddings"] = result.vectors
    source = "cache" if result.cache_hit else "computed"
    return f"{result.vectors.shape[0]} x {result.vectors.shape[1]} embeddings ({source})"


def _behaviour_embeddings(ctx: BuildContext) -> str:
    """Item vectors from the log alone (what the SIDs and the ANN fill use without text)."""
    config = ctx.settings.sids
    vectors = semantic_ids.cooccurrence_embedding(
        train_histories_rows(ctx), len(ctx.items()), config.collab_dim, config.seed
    )
    np.save(ctx.path("embeddings/items.npy"), vectors, allow_pickle=False)
    meta = {
        "source": BEHAVIOUR_SOURCE,
        "dim": int(vectors.shape[1]),
        "items": int(vectors.shape[0]),
        "items_without_signal": int((~vectors.any(axis=1)).sum()),
    }
    ctx.path("embeddings/meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    ctx.cache["item_embeddings"] = vectors
    return (
        f"{vectors.shape[0]} x {vectors.shape[1]} behaviour embeddings (no item text; "
        f"{meta['items_without_signal']} items without co-occurrence signal)"
    )


def step_semantic_ids(ctx: BuildContext) -> str:
    """RQ-OPQ semantic IDs with collisions resolved, codebooks and report."""
    histories = train_histories_rows(ctx)
    config = ctx.settings.sids
    if not ctx.has_text:  # the embeddings already are the collaborative signal
        config = replace(config, collab_weight=0.0)
    result = semantic_ids.build_semantic_ids(ctx.item_embeddings(), config, histories)
    source = "embeddings/items.npy" + ("" if ctx.has_text else f" ({BEHAVIOUR_SOURCE})")
    if config.collab_weight > 0:
        source += f" + co-occurrence PPMI-SVD of train_history (weight {config.collab_weight:g})"
    semantic_ids.save_sids(result, ctx.path("sids/codes.npy").parent, source)
    ctx.cache["sid_codes"] = result.codes
    before = result.report["before_resolution"]
    after = result.report["after_resolution"]
    ctx.eval_results["sids"] = {
        "method": result.report["method"],
        "codebook_sizes": list(config.codebook_sizes),
        "distinct_before_resolution": before["distinct"],
        "distinct_after_resolution": after["distinct"],
        "items": after["items"],
        "moved_items": result.report["moved_items"],
        "reconstruction_error": result.report["reconstruction_error_after"],
    }
    return (
        f"{result.report['method']}: distinct {before['distinct']} -> {after['distinct']} "
        f"of {after['items']} ({result.report['moved_items']} moved)"
    )


def step_trie(ctx: BuildContext) -> str:
    """The SID trie over the final codes (services.retrieval.trie.SidTrie)."""
    from services.retrieval.trie import SidTrie

    codes = ctx.cache.get("sid_codes")
    if codes is None:
        codes = np.load(ctx.version_dir / "sids" / "codes.npy", allow_pickle=False)
    meta = json.loads((ctx.version_dir / "sids" / "meta.json").read_text())
    trie = SidTrie.build(codes, meta["codebook_sizes"], version=ctx.version)
    trie.save(ctx.path("sids/trie.npz"))
    return f"trie over {len(trie)} items, depth {trie.depth}"


# --------------------------------------------------------------------------- runner


def resolve_step(target: str) -> StepFn:
    """``"package.module:function"`` → the function."""
    module_name, _, attr = target.partition(":")
    fn = getattr(importlib.import_module(module_name), attr)
    if not callable(fn):
        raise TypeError(f"step {target} is not callable")
    step: StepFn = fn
    return step


def make_version(config: dict[str, Any], now: float | None = None) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(now))
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    return f"{stamp}-{digest}"


def build(
    root: Path,
    data: Path | DatasetFiles,
    quick: bool = False,
    skip: frozenset[str] = frozenset(),
    steps: list[tuple[str, str]] | None = None,
    settings: BuildSettings | None = None,
) -> BuildContext:
    """Run every step into a new version under ``root``, write the manifest, move CURRENT.

    ``data`` is a resolved dataset, or a data directory holding the default dataset;
    ``settings`` overrides the ones ``quick`` selects (tests use tiny codebooks).
    """
    dataset = data if isinstance(data, DatasetFiles) else dataset_files.named(data)
    settings = settings or BuildSettings.for_mode(quick)
    config = settings.to_config()
    config["data"] = dataset.fingerprint()  # in the config, so in the version hash
    config["has_text"] = dataset.has_text
    if quick and steps is None:
        skip = skip | QUICK_SKIPS
    plan = [(n, t) for n, t in (steps if steps is not None else STEPS) if n not in skip]
    config["steps"] = [n for n, _ in plan]
    version = make_version(config)
    ctx = BuildContext(dataset, root, version, settings, config)
    ctx.version_dir.mkdir(parents=True, exist_ok=False)
    timings: dict[str, float] = {}
    t_all = time.perf_counter()
    for i, (name, target) in enumerate(plan, 1):
        print(f"[{i}/{len(plan)}] {name} ...", flush=True)
        t0 = time.perf_counter()
        summary = resolve_step(target)(ctx)
        timings[name] = round(time.perf_counter() - t0, 2)
        print(f"[{i}/{len(plan)}] {name}: {summary} ({timings[name]:.1f}s)", flush=True)
    # A list, not a dict: the manifest sorts keys and the step order matters.
    config["step_seconds"] = [[name, seconds] for name, seconds in timings.items()]
    write_manifest(ctx.version_dir, version, config, ctx.eval_results)
    set_current(root, version)
    total = time.perf_counter() - t_all
    steps_txt = ", ".join(f"{n} {s:.1f}s" for n, s in timings.items())
    print(
        f"artifacts {version} ({config['build']}) built in {total:.1f}s [{steps_txt}]; "
        f"CURRENT -> {version} in {root}"
    )
    return ctx


def extend(
    root: Path, base: str, names: list[str], dataset: DatasetFiles, quick: bool | None = None
) -> BuildContext:
    """Run the steps ``names`` on a copy of the built version ``base`` into a new version
    (e.g. a step added after ``base`` was built); the manifest records where it came from."""
    old = ArtifactRepository(root).open(base)
    unknown = set(names) - {n for n, _ in STEPS}
    if unknown:
        raise ValueError(f"unknown step(s): {', '.join(sorted(unknown))}")
    config = dict(old.manifest.config)
    is_quick = config.get("build") == "quick" if quick is None else quick
    settings = BuildSettings.for_mode(is_quick)
    config["extended_from"] = {
        "version": old.version,
        "steps": names,
        "settings": "quick" if is_quick else "full",
    }
    config["steps"] = [
        *config.get("steps", []),
        *[n for n in names if n not in config.get("steps", [])],
    ]
    version = make_version(config)
    shutil.copytree(root / old.version, root / version)
    (root / version / MANIFEST_NAME).unlink()
    ctx = BuildContext(dataset, root, version, settings, config, dict(old.manifest.eval))
    for name, target in STEPS:
        if name in names:
            t0 = time.perf_counter()
            summary = resolve_step(target)(ctx)
            print(f"[{name}] {summary} ({time.perf_counter() - t0:.1f}s)", flush=True)
    write_manifest(ctx.version_dir, version, config, ctx.eval_results)
    set_current(root, version)
    print(f"artifacts {version} = {old.version} + {', '.join(names)}; CURRENT -> {version}")
    return ctx


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI: ``python -m models_export artifacts``."""
    dataset_files.add_arguments(parser)
    parser.add_argument(
        "--out", type=Path, default=None, help="artifact root (default ./artifacts)"
    )
    parser.add_argument("--quick", action="store_true", help="smaller settings, faster build")
    parser.add_argument(
        "--skip",
        action="append",
        default=[],
        metavar="STEP",
        help=f"leave a step out (repeatable): {', '.join(n for n, _ in STEPS)}",
    )
    parser.add_argument(
        "--extend",
        metavar="VERSION",
        default=None,
        help="instead of a new build: run the --only steps on a copy of this built version",
    )
    parser.add_argument(
        "--only", action="append", default=[], metavar="STEP", help="with --extend (repeatable)"
    )
    parser.add_argument(
        "--full-settings",
        action="store_true",
        help="with --extend: run the --only steps with full settings even on a quick base",
    )


def run(args: argparse.Namespace) -> int:
    unknown = set(args.skip) - {n for n, _ in STEPS}
    if unknown:
        print(f"unknown step(s): {', '.join(sorted(unknown))}")
        return 2
    dataset = dataset_files.from_args(args)
    if not dataset.has_text:
        print(f"[data] {dataset.name}: no item file, recommendation mode (no item text)")
    root = args.out if args.out is not None else artifact_root()
    root.mkdir(parents=True, exist_ok=True)
    if args.extend:
        if not args.only:
            print("--extend needs at least one --only STEP")
            return 2
        extend(
            root, args.extend, list(args.only), dataset, quick=False if args.full_settings else None
        )
        return 0
    build(root, dataset, quick=args.quick, skip=frozenset(args.skip))
    return 0
