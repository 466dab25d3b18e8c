"""Hybrid candidates in the evaluation harness: each source alone and their fusion.

The sources are the served ones, opened from an artifact version: the constrained
generator (ONNX), BM25 (``services.retrieval.lexical``) and dense search (the artifact's
ONNX MiniLM query encoder against the item embeddings, ``services.retrieval.ann``). Each
source's ranked list is computed once per case; the fusion (``services.retrieval.fusion``,
the code the retrieval service runs) is then cheap to evaluate for every weight setting,
which is how the weights are chosen on the validation split.

Query classes: derived ``category`` and ``title`` queries (DERIVED, see
``models_export.queries``), clean and with each kind of noise of
``models_export.noisy_queries``, with and without the user's history (only the generator
reads history; BM25 and dense search do not).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models_export.evaluation.data import QUERY_KINDS, EvalData
from models_export.evaluation.metrics import all_metrics, target_ranks
from models_export.evaluation.protocol import EvalCase, EvalQuery
from models_export.noisy_queries import (
    NOISE_KINDS,
    build_synonyms,
    catalog_vocabulary,
    noisy_variant,
)
from services.retrieval.ann import AnnIndex
from services.retrieval.config import RetrievalSettings
from services.retrieval.fusion import KNOWN, SOURCES, UNKNOWN, FusionPolicy, FusionWeights, fuse
from services.retrieval.lexical import CONFIG_FILE as LEXICAL_CONFIG
from services.retrieval.lexical import LexicalIndex

CLEAN = "clean"
SELECTION_METRIC = "ndcg@10"
#: the weight grid searched on validation (generated fixed at 1: RRF is scale-free)
LEXICAL_GRID: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
DENSE_GRID: tuple[float, ...] = (0.0, 0.25, 0.5, 1.0, 2.0)
K0_GRID: tuple[float, ...] = (5.0, 20.0, 60.0)

#: what each source hands to the fusion in the service (``RetrievalSettings.fusion_depth``)
SERVED_DEPTH: int = RetrievalSettings.model_fields["fusion_depth"].default

Encode = Callable[[Sequence[str]], np.ndarray]
RankFn = Callable[[Sequence[EvalQuery], int], list[list[int]]]


@dataclass(slots=True)
class QueryClass:
    """One row of the hybrid table: a query kind, a noise kind, with or without history."""

    kind: str
    noise: str
    with_history: bool
    cases: list[EvalCase]

    @property
    def name(self) -> str:
        hist = "+history" if self.with_history else ""
        return f"{self.kind}/{self.noise}{hist}"


@dataclass(slots=True)
class ClassRun:
    """A class's per-source ranked lists and, per case, whether every query term is in
    the catalog vocabulary (which of the policy's weight sets the service would use)."""

    qc: QueryClass
    lists: dict[str, list[list[int]]]
    known: list[bool]


def sample_cases(cases: list[EvalCase], max_cases: int | None, seed: int) -> list[EvalCase]:
    """A reproducible subsample (all when ``max_cases`` is None or not smaller)."""
    if max_cases is None or len(cases) <= max_cases:
        return cases
    keep = np.sort(np.random.default_rng(seed).permutation(len(cases))[:max_cases])
    return [cases[i] for i in keep.tolist()]


def synonyms_for(data: EvalData, texts: Sequence[str], encode: Encode) -> dict[str, str]:
    """Catalog-vocabulary synonyms for the words of ``texts``."""
    catalog = [f"{t} {' '.join(c)}" for t, c in zip(data.titles, data.categories, strict=True)]
    vocab = catalog_vocabulary(catalog)
    words = sorted({w for t in texts for w in t.split() if w.isalpha() and len(w) >= 3})
    return build_synonyms(words, vocab, encode)


def query_classes(
    data: EvalData,
    split: str,
    kinds: Sequence[str],
    noises: Sequence[str],
    histories: Sequence[bool],
    max_cases: int | None,
    seed: int,
    encode: Encode | None,
) -> list[QueryClass]:
    """Every (kind, noise, history) class on ``split``: the same sampled targets for all
    noise kinds and both history settings, so rows are comparable."""
    out: list[QueryClass] = []
    for kind in kinds:
        base = sample_cases(data.search_cases(split, kind, with_history=True), max_cases, seed)
        texts = [c.request.query or "" for c in base]
        synonyms = synonyms_for(data, texts, encode) if "synonym" in noises and encode else {}
        for noise in noises:
            noisy = [
                t if noise == CLEAN else noisy_variant(t, noise, seed, i, synonyms)
                for i, t in enumerate(texts)
            ]
            for with_history in histories:
                cases = [
                    EvalCase(
                        EvalQuery(c.request.user_id, q, c.request.history if with_history else ()),
                        c.target,
                    )
                    for c, q in zip(base, noisy, strict=True)
                ]
                out.append(QueryClass(kind, noise, with_history, cases))
    return out


class HybridSources:
    """The three served sources over one artifact version (any may be None)."""

    def __init__(
        self,
        generator: RankFn | None,
        lexical: LexicalIndex | None,
        ann: AnnIndex | None,
        encode: Encode | None,
    ) -> None:
        self.generator = generator
        self.lexical = lexical
        self.ann = ann
        self.encode = encode
        self._vectors: dict[str, np.ndarray] = {}

    @property
    def names(self) -> list[str]:
        present = {
            "generated": self.generator is not None,
            "lexical": self.lexical is not None,
            "dense": self.ann is not None and self.encode is not None,
        }
        return [s for s in SOURCES if present[s]]

    def known(self, cases: Sequence[EvalCase]) -> list[bool]:
        """Per case: every query term in the catalog vocabulary (True without BM25)."""
        lex = self.lexical
        if lex is None:
            return [True] * len(cases)
        return [lex.all_terms_known(c.request.query or "") for c in cases]

    def lists(self, cases: Sequence[EvalCase], depth: int) -> dict[str, list[list[int]]]:
        """Each source's top ``depth`` rows per case."""
        out: dict[str, list[list[int]]] = {}
        queries = [c.request for c in cases]
        if self.generator is not None:
            out["generated"] = self.generator(queries, depth)
        if self.lexical is not None:
            lex = self.lexical
            out["lexical"] = [[r for r, _ in lex.search(q.query or "", depth)] for q in queries]
        if self.ann is not None and self.encode is not None:
            texts = [q.query or "" for q in queries]
            vectors = self.query_vectors(texts)
            ann = self.ann
            out["dense"] = [[r for r, _ in ann.search(v, depth)] for v in vectors]
        return out

    def query_vectors(self, texts: Sequence[str]) -> np.ndarray:
        """The served query embeddings of ``texts`` (each text encoded once, then cached)."""
        if self.encode is None:
            raise ValueError("this version has no text encoder")
        missing = sorted({t for t in texts if t not in self._vectors})
        for start in range(0, len(missing), 256):
            chunk = missing[start : start + 256]
            for t, v in zip(chunk, self.encode(chunk), strict=True):
                self._vectors[t] = v
        return np.stack([self._vectors[t] for t in texts]) if texts else np.zeros((0, 0))


def fused(
    lists: dict[str, list[list[int]]],
    policy: FusionPolicy | FusionWeights,
    k: int,
    known: Sequence[bool] | None = None,
) -> list[list[int]]:
    """The fused top ``k`` per case (a policy picks each case's weights by ``known``)."""
    n = len(next(iter(lists.values()))) if lists else 0
    out = []
    for i in range(n):
        if isinstance(policy, FusionPolicy):
            weights = policy.for_query(True if known is None else known[i])
        else:
            weights = policy
        out.append([f.row for f in fuse({s: v[i] for s, v in lists.items()}, weights, k)])
    return out


def method_lists(
    lists: dict[str, list[list[int]]],
    policy: FusionPolicy | FusionWeights,
    k: int,
    known: Sequence[bool] | None = None,
) -> dict[str, list[list[int]]]:
    """Each source alone (its own order) and the hybrid."""
    out = {s: [row[:k] for row in v] for s, v in lists.items()}
    out["hybrid"] = fused(lists, policy, k, known)
    return out


def weight_grid(names: Sequence[str]) -> list[FusionWeights]:
    """Candidate fusion weights over the sources present."""
    grids = {
        "generated": (1.0,),
        "lexical": LEXICAL_GRID if "generated" in names else (1.0,),
        "dense": DENSE_GRID,
    }
    axes = [grids[s] for s in names]
    return [
        FusionWeights(dict(zip(names, combo, strict=True)), k0)
        for combo in itertools.product(*axes)
        for k0 in K0_GRID
        if any(combo)
    ]


def _subset(run: ClassRun, want_known: bool) -> tuple[dict[str, list[list[int]]], list[int]]:
    keep = [i for i, known in enumerate(run.known) if known == want_known]
    lists = {s: [v[i] for i in keep] for s, v in run.lists.items()}
    return lists, [run.qc.cases[i].target for i in keep]


def choose_weights(
    runs: Sequence[ClassRun], k: int = 10
) -> tuple[FusionPolicy, list[dict[str, Any]]]:
    """Per query condition (all terms known / not), the grid point with the best
    validation NDCG@10 over all cases of that condition."""
    if not runs:
        return FusionPolicy(), []
    names = list(runs[0].lists)
    grid = weight_grid(names)
    table: list[dict[str, Any]] = [{**w.to_dict()} for w in grid]
    chosen: dict[str, FusionWeights] = {}
    for condition, want in ((KNOWN, True), (UNKNOWN, False)):
        parts = [_subset(r, want) for r in runs]
        parts = [(lists, targets) for lists, targets in parts if targets]
        best: tuple[float, FusionWeights] | None = None
        for w, row in zip(grid, table, strict=True):
            if not parts:
                break
            scores = [
                all_metrics(target_ranks(fused(lists, w, k), targets))[SELECTION_METRIC]
                for lists, targets in parts
            ]
            # pooled over cases: a class with a handful of cases of this condition (a clean
            # query with one rare word) must not weigh as much as a class of typos
            mean = float(np.average(scores, weights=[len(t) for _, t in parts]))
            row[f"valid_{SELECTION_METRIC}_{condition}"] = round(mean, 5)
            if best is None or mean > best[0] + 1e-12:
                best = (mean, w)
        chosen[condition] = best[1] if best is not None else FusionWeights()
    return FusionPolicy(chosen[KNOWN], chosen[UNKNOWN]), table


def open_sources(version_dir: Path, threads: int = 2, beam_width: int = 20) -> HybridSources:
    """The served sources of a version directory (the generator, when trained; BM25 from
    ``lexical/`` or built the served way from the items table; dense when the version has
    the ONNX text encoder)."""
    from models_export.generator.retriever import open_onnx_retriever
    from services.common.text_encoder import TEXT_ENCODER_MODEL, TextEncoder

    generator: RankFn | None = None
    codes_path = version_dir / "generator" / "sid_codes.npy"
    if codes_path.is_file():
        codes = np.load(codes_path, allow_pickle=False).astype(np.int64)
        gen = open_onnx_retriever(version_dir, codes, beam_width=beam_width, threads=threads)
        generator = gen.retrieve
    if (version_dir / LEXICAL_CONFIG).is_file():
        lexical: LexicalIndex | None = LexicalIndex.load(lambda rel: version_dir / rel)
    else:
        lexical = None
    ann = None
    encode: Encode | None = None
    if (version_dir / TEXT_ENCODER_MODEL).is_file():
        ann = AnnIndex(np.load(version_dir / "embeddings" / "items.npy", allow_pickle=False))
        encode = TextEncoder.load(lambda rel: version_dir / rel, threads).encode
    return HybridSources(generator, lexical, ann, encode)


def run_classes(
    sources: HybridSources,
    classes: Sequence[QueryClass],
    depth: int,
    show_progress: bool = True,
) -> list[ClassRun]:
    """Every class's per-source lists."""
    out = []
    for qc in tqdm(classes, desc="hybrid sources", unit="class", disable=not show_progress):
        out.append(ClassRun(qc, sources.lists(qc.cases, depth), sources.known(qc.cases)))
    return out


def choose_on_validation(
    data: EvalData,
    sources: HybridSources,
    noises: Sequence[str],
    histories: Sequence[bool],
    max_cases: int | None,
    seed: int,
    show_progress: bool = True,
) -> tuple[FusionPolicy, list[dict[str, Any]], list[ClassRun]]:
    """The fusion policy chosen on the VALIDATION split's classes (and the grid, the runs)."""
    kinds = [k for k in QUERY_KINDS if k in data.query_kinds()]
    classes = query_classes(
        data, "valid", kinds, noises, histories, max_cases, seed, sources.encode
    )
    runs = run_classes(sources, classes, SERVED_DEPTH, show_progress)
    policy, grid = choose_weights(runs)
    return policy, grid, runs


def score_classes(runs: Sequence[ClassRun], policy: FusionPolicy) -> list[dict[str, Any]]:
    """Metrics of every source alone and of the hybrid, per class."""
    rows = []
    for run in runs:
        qc, lists = run.qc, run.lists
        targets = [c.target for c in qc.cases]
        row: dict[str, Any] = {
            "class": qc.name,
            "kind": qc.kind,
            "noise": qc.noise,
            "history": qc.with_history,
            "n": len(qc.cases),
            "unknown_terms": sum(not k for k in run.known),
            "methods": {},
        }
        for method, ranked in method_lists(lists, policy, 100, run.known).items():
            row["methods"][method] = all_metrics(target_ranks(ranked, targets))
        rows.append(row)
    return rows


__all__ = [
    "CLEAN",
    "NOISE_KINDS",
    "ClassRun",
    "HybridSources",
    "QueryClass",
    "choose_weights",
    "method_lists",
    "open_sources",
    "query_classes",
    "run_classes",
    "score_classes",
]
