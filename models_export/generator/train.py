"""Train the generator (``python -m models_export train-generator``), export it to ONNX.

Writes into ``out``::

    generator/encoding.json, generator/tokenizer.json   (serving-side input encoding)
    generator/hf/                                        (HF weights, safetensors)
    generator/sid_codes.npy, generator/meta.json         (SIDs trained on; settings, timings)
    models/generator_encoder/{config.pbtxt,1/model.onnx}
    models/generator_decoder/{config.pbtxt,1/model.onnx}

Early stopping on validation NDCG@10 (leave-one-out validation targets of a fixed user
sample, recommendation + search-with-history), with a wall-clock budget.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm
from transformers import T5ForConditionalGeneration

from models_export import dataset_files
from models_export.dataset_files import DatasetFiles
from models_export.evaluation.metrics import ndcg_at_k, recall_at_k, target_ranks
from models_export.evaluation.protocol import EvalQuery
from models_export.generator.dataset import (
    MixSettings,
    TrainingData,
    batches,
    load_training_data,
    sample_epoch,
    subset_users,
)
from models_export.generator.export_onnx import TorchStepModel, export_onnx
from models_export.generator.model import (
    PRESETS,
    Normalisation,
    TargetMasks,
    build_model,
    parameter_count,
    sid_loss,
)
from models_export.generator.retriever import GENERATOR_DIR, GenerativeRetriever
from models_export.generator.vocab import train_wordpiece
from services.common.config import artifact_root
from services.retrieval.beam_search import BeamSearch
from services.retrieval.encoding import EncodingConfig, InputEncoder
from services.retrieval.trie import SidTrie


@dataclass(slots=True)
class TrainSettings:
    preset: str = "serving"
    dropout: float | None = None  # None: the preset's own
    # an epoch budget (not the wall clock) decides how far training goes, so an artifact does
    # not depend on how fast the machine was; max_minutes only caps a very slow machine
    epochs: int = 40
    batch_size: int = 256
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 300
    min_lr_ratio: float = 0.05
    patience: int = 4
    max_minutes: float = 50.0
    valid_users: int = 600
    valid_beam: int = 20
    normalisation: Normalisation = "trie"
    threads: int = 2
    seed: int = 0
    vocab_size: int = 8192
    max_query_tokens: int = 24
    mix: MixSettings = field(default_factory=MixSettings)
    export: bool = True
    restore_best: bool = True  # keep the best validation epoch (else the last one)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class TrainResult:
    out_dir: Path
    model: T5ForConditionalGeneration
    encoder: InputEncoder
    meta: dict[str, Any]


def codes_digest(codes: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(codes.astype(np.int64)).tobytes()).hexdigest()


def validation_queries(
    data: TrainingData, users: np.ndarray
) -> dict[str, tuple[list[EvalQuery], list[int]]]:
    """Leave-one-out validation cases of ``users``: recommendation and search+history."""
    rec = [
        EvalQuery(data.user_ids[u], None, tuple(data.train_histories[u].tolist()))
        for u in users
        if len(data.train_histories[u])
    ]
    rec_t = [int(data.valid_targets[u]) for u in users if len(data.train_histories[u])]
    out = {"recommendation": (rec, rec_t)}
    if data.has_text:
        search, search_t = [], []
        for u in users:
            query = data.category_queries[int(data.valid_targets[u])]
            if query:
                hist = tuple(data.train_histories[u].tolist())
                search.append(EvalQuery(data.user_ids[u], data.text(query), hist))
                search_t.append(int(data.valid_targets[u]))
        out["search+history"] = (search, search_t)
    return out


def evaluate_torch(
    model: T5ForConditionalGeneration,
    encoder: InputEncoder,
    trie: SidTrie,
    codes: np.ndarray,
    cases: dict[str, tuple[list[EvalQuery], list[int]]],
    beam: int,
) -> dict[str, float]:
    """NDCG@10 / Recall@10 per mode with the real constrained beam search (torch backend)."""
    search = BeamSearch(TorchStepModel(model, encoder.layout), encoder.layout, trie, codes)
    retriever = GenerativeRetriever("valid", encoder, search, beam, batch_size=128)
    out: dict[str, float] = {}
    for mode, (queries, targets) in cases.items():
        ranks = target_ranks(retriever.retrieve(queries, 10), targets)
        out[f"{mode}/ndcg@10"] = ndcg_at_k(ranks, 10)
        out[f"{mode}/recall@10"] = recall_at_k(ranks, 10)
    ndcgs = [v for k, v in out.items() if k.endswith("ndcg@10")]
    out["score"] = float(np.mean(ndcgs)) if ndcgs else 0.0
    model.train()
    return out


def _lr_factor(step: int, warmup: int, progress: float, floor: float) -> float:
    """Linear warm-up, then cosine decay over ``progress`` in [0, 1] down to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    p = min(1.0, max(0.0, progress))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * p))


def train(
    data: TrainingData,
    settings: TrainSettings,
    out_dir: Path,
    sid_source: str,
    progress: bool = True,
) -> TrainResult:
    """Fit the vocabulary and the model, early-stop on validation, save and export."""
    t_start = time.perf_counter()
    torch.set_num_threads(settings.threads)
    rng = np.random.default_rng(settings.seed)
    tokenizer = train_wordpiece(data.vocab_texts, settings.vocab_size)
    config = EncodingConfig(
        codebook_sizes=data.codebook_sizes,
        n_words=tokenizer.get_vocab_size(),
        max_query_tokens=settings.max_query_tokens,
        max_history=settings.mix.max_history,
        keywords=bool(data.keywords),
    )
    encoder = InputEncoder(config, tokenizer, data.codes)
    layout = encoder.layout
    trie = SidTrie.build(data.codes, data.codebook_sizes)
    masks = TargetMasks(trie, data.codes) if settings.normalisation == "trie" else None
    arch = PRESETS[settings.preset]
    if settings.dropout is not None:
        arch = dataclasses.replace(arch, dropout=settings.dropout)
    model = build_model(layout, arch, settings.seed)
    model.train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay
    )
    valid_users = rng.choice(
        len(data.user_ids), size=min(settings.valid_users, len(data.user_ids)), replace=False
    )
    cases = validation_queries(data, np.sort(valid_users))
    budget = settings.max_minutes * 60.0
    step = 0
    best: dict[str, Any] = {"score": -1.0, "epoch": 0}
    best_state: dict[str, torch.Tensor] | None = None
    history: list[dict[str, Any]] = []
    bad_epochs = 0
    stop_reason = "epochs"
    for epoch in range(1, settings.epochs + 1):
        t_epoch = time.perf_counter()
        examples = sample_epoch(data, settings.mix, rng)
        steps_per_epoch = math.ceil(len(examples) / settings.batch_size)
        planned = settings.epochs * steps_per_epoch
        losses: list[float] = []
        bar = tqdm(
            batches(examples, encoder, settings.batch_size, rng),
            total=steps_per_epoch,
            desc=f"epoch {epoch}",
            unit="batch",
            disable=not progress,
            leave=False,
        )
        for enc_batch, target_rows in bar:
            # the schedule follows whichever runs out first: epochs or the wall-clock budget
            # (the machine is shared, so epoch times vary)
            done = max(
                (step - settings.warmup_steps) / max(1, planned - settings.warmup_steps),
                (time.perf_counter() - t_start) / budget,
            )
            for group in optimizer.param_groups:
                group["lr"] = settings.lr * _lr_factor(
                    step, settings.warmup_steps, done, settings.min_lr_ratio
                )
            rows_t = torch.from_numpy(target_rows)
            loss = sid_loss(
                model,
                layout,
                torch.from_numpy(enc_batch.input_ids),
                torch.from_numpy(enc_batch.attention_mask),
                torch.from_numpy(data.codes[target_rows]),
                rows_t,
                masks,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
            losses.append(float(loss.item()))
            if len(losses) % 20 == 0:
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.3f}")
        bar.close()
        train_s = time.perf_counter() - t_epoch
        metrics = evaluate_torch(model, encoder, trie, data.codes, cases, settings.valid_beam)
        epoch_s = time.perf_counter() - t_epoch
        record = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "train_seconds": round(train_s, 1),
            "seconds": round(epoch_s, 1),
            **{k: round(v, 4) for k, v in metrics.items()},
        }
        history.append(record)
        if progress:
            print(json.dumps(record), flush=True)
        if metrics["score"] > best["score"]:
            best = {"epoch": epoch, **metrics}
            best_state = copy.deepcopy(model.state_dict())
            bad_epochs = 0
        else:
            bad_epochs += 1
        elapsed = time.perf_counter() - t_start
        if bad_epochs >= settings.patience:
            stop_reason = f"early stop (no improvement for {settings.patience} epochs)"
            break
        if elapsed + 0.8 * epoch_s > budget:
            stop_reason = f"time budget {settings.max_minutes:g} min"
            break
    if best_state is not None and settings.restore_best:
        model.load_state_dict(best_state)
    model.eval()
    train_seconds = time.perf_counter() - t_start
    gen_dir = out_dir / GENERATOR_DIR
    gen_dir.mkdir(parents=True, exist_ok=True)
    encoder.save(gen_dir)
    model.save_pretrained(gen_dir / "hf")
    np.save(gen_dir / "sid_codes.npy", data.codes.astype(np.int32), allow_pickle=False)
    meta: dict[str, Any] = {
        "sid_source": sid_source,
        "sid_codes_sha256": codes_digest(data.codes),
        "codebook_sizes": list(data.codebook_sizes),
        "architecture": arch.to_dict(),
        "preset": settings.preset,
        "parameters": parameter_count(model),
        "vocab": {
            "words": config.n_words,
            "total": layout.vocab_size,
            "decoder": layout.decoder_vocab_size,
        },
        "settings": settings.to_dict(),
        "text": data.has_text,
        "epochs_run": len(history),
        "best_epoch": best["epoch"],
        "best_valid": {k: round(float(v), 4) for k, v in best.items() if k != "epoch"},
        "stop_reason": stop_reason,
        "train_seconds": round(train_seconds, 1),
        "history": history,
        "threads": settings.threads,
    }
    if settings.export:
        report = export_onnx(model, layout, out_dir / "models")
        meta["onnx"] = report.to_dict()
    (gen_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return TrainResult(out_dir, model, encoder, meta)


# --------------------------------------------------------------------------- SID sources


def load_sids(
    source: str, version_dir: Path, item_ids: list[str], dataset: DatasetFiles | None = None
) -> tuple[np.ndarray, tuple[int, ...]]:
    """``artifact`` (sids/codes.npy), ``published:<variant>`` (an index published with
    ``dataset``, default: the environment's) or a path to an index.json."""
    from models_export.semantic_ids import load_published_index

    if source == "artifact":
        codes = np.load(version_dir / "sids" / "codes.npy", allow_pickle=False)
        meta = json.loads((version_dir / "sids" / "meta.json").read_text())
        return codes.astype(np.int64), tuple(int(k) for k in meta["codebook_sizes"])
    if source.startswith("published:"):
        variant = source.split(":", 1)[1]
        path = (dataset or dataset_files.named()).index_file(variant)
    else:
        path = Path(source)
    codes, sizes = load_published_index(path, item_ids)
    return codes.astype(np.int64), sizes


def _resolve_version_dir(arg: Path | None) -> Path:
    if arg is not None:
        return arg
    root = artifact_root()
    return root / (root / "CURRENT").read_text().strip()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CLI: ``python -m models_export train-generator``."""
    d = TrainSettings()
    parser.add_argument(
        "--artifact", type=Path, default=None, help="artifact version directory (default: CURRENT)"
    )
    parser.add_argument(
        "--sids",
        default="artifact",
        help="artifact | published:<variant> (of --dataset) | path to a <Stem>.index.json",
    )
    dataset_files.add_arguments(parser, explicit_files=False)
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="output directory (default artifacts/runs/generator-<sids>-<preset>)",
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default=d.preset)
    parser.add_argument(
        "--dropout", type=float, default=None, help="dropout rate (default: the preset's)"
    )
    parser.add_argument("--epochs", type=int, default=d.epochs)
    parser.add_argument("--max-minutes", type=float, default=d.max_minutes)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--patience", type=int, default=d.patience)
    parser.add_argument("--valid-users", type=int, default=d.valid_users)
    parser.add_argument("--normalisation", choices=["trie", "level"], default=d.normalisation)
    parser.add_argument("--threads", type=int, default=d.threads)
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument(
        "--max-users",
        type=int,
        default=0,
        help="train on a random sample of users (development slices)",
    )
    parser.add_argument(
        "--no-index-examples", action="store_true", help="leave out the item-text -> SID examples"
    )
    parser.add_argument(
        "--history-crop",
        type=float,
        default=d.mix.p_history_crop,
        help="probability of cutting a training context to a random suffix",
    )
    parser.add_argument(
        "--history-dropout",
        type=float,
        default=d.mix.history_item_dropout,
        help="probability of dropping each training-context item (not the most recent)",
    )
    parser.add_argument(
        "--no-text", action="store_true", help="ignore item text: recommendation mode only"
    )
    parser.add_argument(
        "--evaluate",
        action="store_true",
        help="evaluate the exported ONNX model on the test split afterwards",
    )


def run(args: argparse.Namespace) -> int:
    version_dir = _resolve_version_dir(args.artifact)
    tables = version_dir / "tables"
    from models_export import ingest

    item_ids = [i.item_id for i in ingest.read_items(tables)]
    published = args.sids.startswith("published:")
    dataset = dataset_files.named(args.data_dir, args.dataset) if published else None
    codes, sizes = load_sids(args.sids, version_dir, item_ids, dataset)
    data = load_training_data(tables, codes, sizes)
    if args.max_users:
        data = subset_users(data, args.max_users, args.seed)
    if args.no_text:
        data.item_texts = [""] * data.num_items
        data.category_queries = [None] * data.num_items
        data.title_queries = [None] * data.num_items
        data.vocab_texts = []
    label = args.sids.replace("published:", "").replace("/", "_")
    d_mix = MixSettings()
    out = args.out or artifact_root() / "runs" / f"generator-{label}-{args.preset}"
    settings = TrainSettings(
        preset=args.preset,
        dropout=args.dropout,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        patience=args.patience,
        max_minutes=args.max_minutes,
        valid_users=args.valid_users,
        normalisation=args.normalisation,
        threads=args.threads,
        seed=args.seed,
        mix=dataclasses.replace(
            d_mix,
            index_repeats=0 if args.no_index_examples else d_mix.index_repeats,
            p_history_crop=args.history_crop,
            history_item_dropout=args.history_dropout,
        ),
    )
    result = train(data, settings, out, args.sids)
    meta = result.meta
    best = meta["best_valid"]
    print(
        f"generator ({args.preset}, {meta['parameters']:,} params, SIDs {args.sids}) trained in "
        f"{meta['train_seconds']:.0f}s on {settings.threads} threads, {meta['epochs_run']} epochs "
        f"({meta['stop_reason']}); best epoch {meta['best_epoch']}: valid score {best['score']:.4f}"
        f"; ONNX max|diff| vs HF {meta.get('onnx', {}).get('max_abs_diff_step_logits_onnx_vs_hf')}"
        f" -> {out}"
    )
    if args.evaluate:
        from models_export.generator.evaluate import evaluate_run

        evaluate_run(out, version_dir, data.codes, text=data.has_text)
    return 0
