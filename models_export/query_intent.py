"""Category intent: a small head over the artifact's MiniLM query encoder, trained on
queries derived from item text, calibrated, exported to ONNX.

The head maps the query embedding (the same ONNX encoder the retriever's dense source uses:
one encoder, one home) to the category path at levels 2 and 3. Training queries are made
from every training item's own text (all DERIVED, no real query logs exist for this
catalog): the category-path words, the 2-4 highest-IDF title words, random 2-4 word subsets
of the title, brand + title words, and typo'd copies of some of them. Items are split by a
hash of their id into train / calibration / test, so the reported accuracy is on items the
head never saw. Probabilities are calibrated by temperature scaling (Guo et al., ICML 2017)
on the calibration items; the temperatures are baked into the exported graph.
"""

from __future__ import annotations

import itertools
import json
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models_export import noisy_queries, queries
from models_export.ingest import Item
from models_export.triton import write_triton_config
from services.common.text import normalize_query
from services.query_understanding.intent import (
    INTENT_FILE,
    INTENT_MODEL,
    INTENT_MODEL_NAME,
    category_label,
)

Encode = Callable[[Sequence[str]], np.ndarray]
Correct = Callable[[str], str]
SPLITS = ("train", "calibration", "test")


@dataclass(frozen=True, slots=True)
class IntentConfig:
    """Training settings (``quick`` shrinks the query set and the epochs)."""

    subsets_per_item: int = 4
    typo_share: float = 0.3
    hidden: int = 256
    dropout: float = 0.1
    epochs: int = 25
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 13
    calibration_share: float = 0.1
    test_share: float = 0.1

    @classmethod
    def for_mode(cls, quick: bool) -> IntentConfig:
        return cls(subsets_per_item=1, epochs=12) if quick else cls()


def item_split(item_id: str, config: IntentConfig) -> str:
    """train / calibration / test by a stable hash of the item id."""
    u = (zlib.crc32(item_id.encode()) % 10_000) / 10_000
    if u < config.test_share:
        return "test"
    if u < config.test_share + config.calibration_share:
        return "calibration"
    return "train"


def _title_pool(item: Item) -> list[str]:
    brand = set(queries.tokenize(item.brand))
    return [w for w in queries.tokenize(item.title) if w not in brand and not w.isdigit()]


def training_queries(
    item: Item, index: int, idf: queries.TitleIdf, config: IntentConfig
) -> list[str]:
    """Derived queries for one item: category words, top-IDF title words, random title
    subsets, brand + title words, and typo'd copies (seeded by ``(seed, index)``)."""
    rng = np.random.default_rng((config.seed, index))
    out = [queries.category_query(item.categories), queries.title_query(item, idf) or ""]
    pool = _title_pool(item)
    for _ in range(config.subsets_per_item if len(pool) >= 2 else 0):
        k = int(rng.integers(2, min(4, len(pool)) + 1))
        picks = sorted(rng.choice(len(pool), size=k, replace=False).tolist())
        out.append(" ".join(pool[i] for i in picks))
    if item.brand and pool:
        out.append(f"{item.brand} {' '.join(pool[: int(rng.integers(1, 3))])}")
    noisy = [
        " ".join(noisy_queries.add_typos(q.split(), rng))
        for q in out[2:]
        if rng.random() < config.typo_share
    ]
    return [normalize_query(q) for q in out + noisy if q.strip()]


def eval_queries(item: Item, idf: queries.TitleIdf) -> dict[str, str]:
    """The evaluation protocol's two derived queries of an item (category and title)."""
    found = {"category": queries.category_query(item.categories)}
    title = queries.title_query(item, idf)
    if title:
        found["title"] = title
    return {k: v for k, v in found.items() if v}


@dataclass(slots=True)
class IntentData:
    """Labels and the derived training queries, split by item."""

    level2: list[str]
    level3: list[str]
    texts: dict[str, list[str]]
    labels2: dict[str, list[int]]
    labels3: dict[str, list[int]]
    test_cases: list[tuple[str, str, int, int]]  # (kind, query, label2, label3)


def build_data(items: Sequence[Item], config: IntentConfig) -> IntentData:
    """Every item's training queries, under its split; the test items' protocol queries."""
    level2 = sorted({category_label(i.categories, 2) for i in items if i.categories})
    level3 = sorted({category_label(i.categories, 3) for i in items if i.categories})
    idx2 = {c: n for n, c in enumerate(level2)}
    idx3 = {c: n for n, c in enumerate(level3)}
    idf = queries.TitleIdf.fit(i.title for i in items)
    texts: dict[str, list[str]] = {s: [] for s in SPLITS}
    labels2: dict[str, list[int]] = {s: [] for s in SPLITS}
    labels3: dict[str, list[int]] = {s: [] for s in SPLITS}
    test_cases: list[tuple[str, str, int, int]] = []
    for index, item in enumerate(items):
        if not item.categories:
            continue
        split = item_split(item.item_id, config)
        y2, y3 = idx2[category_label(item.categories, 2)], idx3[category_label(item.categories, 3)]
        made = training_queries(item, index, idf, config)
        texts[split].extend(made)
        labels2[split].extend([y2] * len(made))
        labels3[split].extend([y3] * len(made))
        if split == "test":
            test_cases.extend((k, q, y2, y3) for k, q in eval_queries(item, idf).items())
    return IntentData(level2, level3, texts, labels2, labels3, test_cases)


def encode_all(encode: Encode, texts: Sequence[str], batch: int = 256) -> np.ndarray:
    """Embeddings of ``texts`` in batches of similar length (little padding), with a
    progress bar; rows in the order of ``texts``."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    chunks = [
        encode([texts[i] for i in order[start : start + batch]])
        for start in tqdm(range(0, len(order), batch), desc="embed intent queries", unit="batch")
    ]
    out = np.empty((len(texts), chunks[0].shape[1]), dtype=np.float32)
    out[np.asarray(order)] = np.concatenate(chunks)
    return out


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising the negative log-likelihood (bounded
    Brent search over log T)."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(labels))

    def nll(log_t: float) -> float:
        z = logits / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        return float(-logp[rows, labels].mean())

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE of the top-1 prediction over equal-width confidence bins."""
    if len(labels) == 0:
        return 0.0
    conf = probs.max(axis=1)
    right = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    total = 0.0
    for lo, hi in itertools.pairwise(edges):
        sel = (conf > lo) & (conf <= hi)
        if sel.any():
            total += sel.mean() * abs(right[sel].mean() - conf[sel].mean())
    return float(total)


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    out: np.ndarray = e / e.sum(axis=1, keepdims=True)
    return out


@dataclass(slots=True)
class TrainedHead:
    module: Any  # torch.nn.Module producing (logits2, logits3)
    temperature2: float
    temperature3: float
    seconds: float


def train_head(x: dict[str, np.ndarray], data: IntentData, config: IntentConfig) -> TrainedHead:
    """Train the two-level head on the train split; fit temperatures on calibration."""
    import torch
    from torch import nn

    torch.manual_seed(config.seed)
    dim = x["train"].shape[1]

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Linear(dim, config.hidden), nn.GELU(), nn.Dropout(config.dropout)
            )
            self.level2 = nn.Linear(config.hidden, len(data.level2))
            self.level3 = nn.Linear(config.hidden, len(data.level3))

        def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            h = self.body(emb)
            return self.level2(h), self.level3(h)

    head = Head()
    xt = torch.from_numpy(x["train"])
    y2 = torch.tensor(data.labels2["train"])
    y3 = torch.tensor(data.labels3["train"])
    opt = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=config.epochs)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for _ in tqdm(range(config.epochs), desc="train intent head", unit="epoch"):
        head.train()
        order = torch.randperm(len(xt))
        for i in range(0, len(order), config.batch_size):
            b = order[i : i + config.batch_size]
            l2, l3 = head(xt[b])
            loss = loss_fn(l2, y2[b]) + loss_fn(l3, y3[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        sched.step()
    head.eval()
    seconds = time.perf_counter() - start
    t2 = t3 = 1.0
    if len(x["calibration"]):
        with torch.no_grad():
            c2, c3 = head(torch.from_numpy(x["calibration"]))
        t2 = fit_temperature(c2.numpy(), np.asarray(data.labels2["calibration"]))
        t3 = fit_temperature(c3.numpy(), np.asarray(data.labels3["calibration"]))
    return TrainedHead(head, t2, t3, seconds)


def head_logits(trained: TrainedHead, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    import torch

    with torch.no_grad():
        l2, l3 = trained.module(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)))
    return l2.numpy(), l3.numpy()


def export_head(trained: TrainedHead, dim: int, models_dir: Path, opset: int = 17) -> Path:
    """``models/query_intent/{1/model.onnx, config.pbtxt}``: embedding -> calibrated
    probabilities at levels 2 and 3."""
    import torch
    from torch import nn

    inner = trained.module
    temps = (trained.temperature2, trained.temperature3)

    class Calibrated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            l2, l3 = self.inner(emb)
            return torch.softmax(l2 / temps[0], dim=-1), torch.softmax(l3 / temps[1], dim=-1)

    out_dir = models_dir / INTENT_MODEL_NAME
    path = out_dir / "1" / "model.onnx"
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            Calibrated().eval(),
            (torch.zeros(2, dim),),
            str(path),
            input_names=["embedding"],
            output_names=["level2_probs", "level3_probs"],
            dynamic_axes={
                "embedding": {0: "batch"},
                "level2_probs": {0: "batch"},
                "level3_probs": {0: "batch"},
            },
            opset_version=opset,
            dynamo=False,
        )
    n2, n3 = inner.level2.out_features, inner.level3.out_features
    write_triton_config(
        out_dir / "config.pbtxt",
        name=INTENT_MODEL_NAME,
        inputs=[("embedding", "TYPE_FP32", [dim])],
        outputs=[("level2_probs", "TYPE_FP32", [n2]), ("level3_probs", "TYPE_FP32", [n3])],
        max_batch_size=256,
    )
    return path


def accuracy_table(
    probs2: np.ndarray, probs3: np.ndarray, cases: Sequence[tuple[str, str, int, int]]
) -> dict[str, float]:
    """Top-1 and top-3 accuracy at both levels, and the calibration error."""
    y2 = np.asarray([c[2] for c in cases])
    y3 = np.asarray([c[3] for c in cases])
    if not len(cases):
        return {"n": 0}
    top3 = np.argsort(-probs3, axis=1)[:, :3]
    return {
        "n": len(cases),
        "level2_top1": float((probs2.argmax(1) == y2).mean()),
        "level3_top1": float((probs3.argmax(1) == y3).mean()),
        "level3_top3": float((top3 == y3[:, None]).any(1).mean()),
        "level2_ece": expected_calibration_error(probs2, y2),
        "level3_ece": expected_calibration_error(probs3, y3),
    }


def evaluate_intent(
    predict: Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]],
    cases: Sequence[tuple[str, str, int, int]],
    seed: int,
    correct: Correct | None = None,
) -> dict[str, dict[str, float]]:
    """Held-out accuracy per query kind, clean and with 1-2 typos (seeded); with a
    ``correct`` function the typo'd queries are also measured after spelling correction,
    the way the service classifies them."""
    rows: dict[str, dict[str, float]] = {}
    variants: dict[str, list[str]] = {"clean": [c[1] for c in cases]}
    typo = [
        " ".join(noisy_queries.add_typos(c[1].split(), np.random.default_rng((seed, i, 7))))
        for i, c in enumerate(cases)
    ]
    variants["typo"] = typo
    if correct is not None:
        variants["typo_corrected"] = [correct(normalize_query(q)) for q in typo]
    for name, texts in variants.items():
        for kind in ("category", "title"):
            sel = [i for i, c in enumerate(cases) if c[0] == kind]
            if not sel:
                continue
            p2, p3 = predict([texts[i] for i in sel])
            rows[f"{kind}/{name}"] = accuracy_table(p2, p3, [cases[i] for i in sel])
    return rows


def write_intent_file(
    path: Path, data: IntentData, trained: TrainedHead, extra: dict[str, Any]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "model": INTENT_MODEL,
        "level2": data.level2,
        "level3": data.level3,
        "temperature2": trained.temperature2,
        "temperature3": trained.temperature3,
        **extra,
    }
    path.write_text(json.dumps(doc, indent=1))


def build_intent(
    items: Sequence[Item],
    encode: Encode,
    version_dir: Path,
    config: IntentConfig,
    correct: Correct | None = None,
) -> dict[str, Any]:
    """Train, calibrate, export and evaluate the intent head into ``version_dir``."""
    data = build_data(items, config)
    x = {s: encode_all(encode, data.texts[s]) for s in SPLITS}
    trained = train_head(x, data, config)
    dim = int(x["train"].shape[1])
    export_head(trained, dim, version_dir / "models")

    import onnxruntime as ort

    session = ort.InferenceSession(
        str(version_dir / INTENT_MODEL), providers=["CPUExecutionProvider"]
    )

    def predict(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        emb = encode_all(encode, [normalize_query(t) for t in texts])
        p2, p3 = session.run(None, {"embedding": emb})
        return np.asarray(p2), np.asarray(p3)

    # the exported graph against the torch head with the temperatures applied
    probe = x["test"][:64] if len(x["test"]) else x["train"][:64]
    l2, l3 = head_logits(trained, probe)
    o2, o3 = session.run(None, {"embedding": probe})
    parity = float(
        max(
            np.abs(_softmax(l2 / trained.temperature2) - o2).max(),
            np.abs(_softmax(l3 / trained.temperature3) - o3).max(),
        )
    )
    cal = {}
    if len(x["calibration"]):  # the head's calibration logits, once for both levels
        lc2, lc3 = head_logits(trained, x["calibration"])
        for level, logits, temp, labels in (
            ("level2", lc2, trained.temperature2, data.labels2["calibration"]),
            ("level3", lc3, trained.temperature3, data.labels3["calibration"]),
        ):
            y = np.asarray(labels)
            cal[level] = {
                "temperature": temp,
                "ece_before": expected_calibration_error(_softmax(logits), y),
                "ece_after": expected_calibration_error(_softmax(logits / temp), y),
            }
    held_out = evaluate_intent(predict, data.test_cases, config.seed, correct)
    results: dict[str, Any] = {
        "derived": True,
        "config": asdict(config),
        "classes": {"level2": len(data.level2), "level3": len(data.level3)},
        "training_queries": {s: len(data.texts[s]) for s in SPLITS},
        "train_seconds": round(trained.seconds, 1),
        "onnx_parity_max_abs_diff": parity,
        "calibration": cal,
        "held_out": held_out,
    }
    write_intent_file(version_dir / INTENT_FILE, data, trained, {"eval": results})
    return results


def intent_summary(results: dict[str, Any]) -> str:
    """One line: classes and the held-out title-query accuracy."""
    ho = results["held_out"]
    title = ho.get("title/clean", {})
    typo = ho.get("title/typo_corrected", ho.get("title/typo", {}))
    return (
        f"intent head: {results['classes']['level2']} level-2 / {results['classes']['level3']} "
        f"level-3 classes; held-out title queries L2/L3 top-1 "
        f"{title.get('level2_top1', 0):.3f}/{title.get('level3_top1', 0):.3f} clean, "
        f"{typo.get('level2_top1', 0):.3f}/{typo.get('level3_top1', 0):.3f} with typos"
    )


# --------------------------------------------------------------------------- report


def intent_markdown(results: dict[str, Any], version: str, root: str = "artifacts") -> str:
    """The held-out accuracy table of one artifact's intent head."""
    cal = results.get("calibration", {})
    lines = [
        "# Category intent: held-out accuracy",
        "",
        f"Command: `python -m models_export report-intent --artifact-dir {root} --version "
        f"{version}` (the figures "
        "are measured by the artifact build's `query_understanding` step and kept in its "
        "manifest).  ",
        "Machine: 2-core x86_64 VM, no GPU. Data: amazon_scientific. All queries are DERIVED "
        "from item text; the test items (a hash split of item ids, "
        f"{results['training_queries']['test']} training-style queries) were never seen by "
        "the head. Test queries follow the evaluation protocol: the category-path words and "
        "the 2-4 highest-IDF title words of each test item; typos are 1-2 character edits "
        "(seeded). 'typo, corrected' = the typo'd query after the service's spelling "
        "correction, as served.  ",
        f"Classes: {results['classes']['level2']} level-2, {results['classes']['level3']} "
        f"level-3 paths. Encoder: the artifact's MiniLM ONNX text encoder (the one the "
        f"retriever's dense source uses); head trained in {results['train_seconds']} s.",
        "",
        "| queries | n | L2 top-1 | L3 top-1 | L3 top-3 | L2 ECE | L3 ECE |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in results["held_out"].items():
        if not row.get("n"):
            continue
        label = key.replace("/", " / ").replace("typo_corrected", "typo, corrected")
        lines.append(
            f"| {label} | {row['n']} | {row['level2_top1']:.3f} | {row['level3_top1']:.3f} | "
            f"{row['level3_top3']:.3f} | {row['level2_ece']:.3f} | {row['level3_ece']:.3f} |"
        )
    if cal:
        lines += ["", "| calibration (held-out calibration items) | T | ECE before | ECE after |"]
        lines.append("|---|---|---|---|")
        for level, c in cal.items():
            lines.append(
                f"| {level} | {c['temperature']:.3f} | {c['ece_before']:.3f} | "
                f"{c['ece_after']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def add_arguments(parser: Any) -> None:
    parser.add_argument("--artifact-dir", type=Path, default=None, help="default ./artifacts")
    parser.add_argument("--version", default="", help="default CURRENT")
    parser.add_argument("--out", type=Path, default=Path("docs/results/query_intent"))


def run(args: Any) -> int:
    from models_export.result_files import write_results
    from services.common.artifacts import ArtifactRepository
    from services.common.config import artifact_root

    arts = ArtifactRepository(args.artifact_dir or artifact_root()).open(args.version or None)
    found = arts.manifest.eval.get("query_understanding")
    if not found:
        print(f"artifact {arts.version} has no query-understanding results (built without text?)")
        return 1
    root = str(args.artifact_dir or artifact_root())
    text = intent_markdown(found["intent"], arts.version, root)
    print(text)
    write_results(args.out, found, text)
    return 0
