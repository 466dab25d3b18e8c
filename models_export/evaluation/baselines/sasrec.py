"""SASRec (Kang & McAuley, ICDM 2018) trained with full-softmax cross-entropy over all items.

Causal self-attention over the last ``max_len`` history items; item embeddings are shared
between input and output. Trained on the TRAINING histories only (every prefix predicts its
next item); the epoch with the best VALIDATION NDCG@10 (ties: Recall@10) is kept, with early
stopping. Torch is imported here only; import this module lazily.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn
from tqdm import tqdm

from models_export.evaluation.metrics import ndcg_at_k, recall_at_k
from models_export.evaluation.protocol import RECOMMENDATION, EvalCase, EvalQuery, top_k_rows

_NEG = -1e9  # additive mask value; finite so fully masked (padding) rows stay NaN-free


@dataclass(slots=True)
class SasRecConfig:
    hidden: int = 64
    blocks: int = 2
    heads: int = 1
    max_len: int = 50
    # Validation NDCG@10 (full data): 0.5 -> .0633, 0.3 -> .0675 (but 93 epochs, 400 s),
    # 0.2 -> .0658 (54 epochs, ~180 s); 2 heads -> .0651; lr 2e-3 -> .0647. 0.2 keeps
    # training within a few minutes on the 2-core machine.
    dropout: float = 0.2
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 15  # epochs without a better validation NDCG@10 before stopping
    max_seconds: float | None = 600.0  # wall-clock cap on training
    # One intra-op thread: the tensors are tiny, and on the shared 2-core machine two OpenMP
    # threads made an epoch ~6x slower (14.5 s vs 2.5 s) whenever another process was busy.
    threads: int = 1
    seed: int = 0


@dataclass(slots=True)
class TrainReport:
    best_epoch: int = 0
    best_valid: dict[str, float] = field(default_factory=dict)
    epochs_run: int = 0
    seconds: float = 0.0
    stopped_by: str = ""
    history: list[dict[str, float]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class _Block(nn.Module):
    """Pre-LayerNorm causal self-attention + position-wise feed-forward."""

    def __init__(self, d: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Dropout(dropout), nn.Linear(d, d))
        self.drop = nn.Dropout(dropout)
        self.attn_dropout = dropout

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        q, k, v = (t.view(b, n, self.heads, d // self.heads).transpose(1, 2) for t in (q, k, v))
        att = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.attn_dropout if self.training else 0.0
        )
        x = x + self.drop(self.proj(att.transpose(1, 2).reshape(b, n, d)))
        return x + self.drop(self.ff(self.ln2(x)))


class SasRecModel(nn.Module):
    """Item ids are shifted by one: 0 is padding."""

    def __init__(self, num_items: int, cfg: SasRecConfig) -> None:
        super().__init__()
        self.num_items = num_items
        self.item = nn.Embedding(num_items + 1, cfg.hidden, padding_idx=0)
        self.pos = nn.Embedding(cfg.max_len, cfg.hidden)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(
            _Block(cfg.hidden, cfg.heads, cfg.dropout) for _ in range(cfg.blocks)
        )
        self.ln = nn.LayerNorm(cfg.hidden)
        nn.init.normal_(self.item.weight, std=1.0 / math.sqrt(cfg.hidden))
        with torch.no_grad():
            self.item.weight[0].zero_()

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, L, d) for right-aligned, left-padded id sequences (B, L)."""
        _, n = seq.shape
        valid = seq > 0
        x = self.item(seq) * math.sqrt(self.item.embedding_dim)
        # Positions count back from the most recent item, so trimming left padding
        # (see _trim) does not change them.
        x = self.drop(x + self.pos(torch.arange(n - 1, -1, -1, device=seq.device))[None])
        x = x * valid[..., None]
        causal = torch.ones(n, n, dtype=torch.bool, device=seq.device).tril()
        allowed = causal[None, None] & valid[:, None, None, :]
        mask = torch.zeros(allowed.shape, dtype=x.dtype).masked_fill(~allowed, _NEG)
        for block in self.blocks:
            x = block(x, mask) * valid[..., None]
        return self.ln(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores over the real items (rows 1..N of the shared embedding)."""
        return hidden @ self.item.weight[1:].T


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Run with ``n`` torch intra-op threads, then restore the previous setting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _pad_left(seqs: Sequence[Sequence[int] | np.ndarray], max_len: int) -> np.ndarray:
    """Shifted ids (+1), last ``max_len`` items right-aligned, 0 = padding."""
    out = np.zeros((len(seqs), max_len), dtype=np.int64)
    for i, s in enumerate(seqs):
        tail = list(s)[-max_len:]
        if tail:
            out[i, -len(tail) :] = np.asarray(tail, dtype=np.int64) + 1
    return out


def _trim(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Drop the columns that are padding in every row (batches are right-aligned)."""
    lengths = (tensors[0] > 0).sum(1)
    keep = max(int(lengths.max()), 1)
    return tuple(t[:, -keep:] for t in tensors)


def _length_buckets(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Batches of similar-length sequences (little padding), in random order each epoch.

    Most histories are short and a few are long; random batches would pad almost every
    batch to the longest member.
    """
    order = np.argsort(lengths + rng.random(len(lengths)), kind="stable")
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class SasRecRetriever:
    """Trained SASRec used for recommendation mode (history only)."""

    name = "sasrec"
    modes = frozenset({RECOMMENDATION})

    def __init__(
        self,
        model: SasRecModel,
        cfg: SasRecConfig,
        report: TrainReport,
        tie_key: np.ndarray | None = None,
    ) -> None:
        self.model = model.eval()
        self.tie_key = tie_key
        self.cfg = cfg
        self.report = report

    @torch.no_grad()
    def scores(self, histories: Sequence[Sequence[int] | np.ndarray]) -> np.ndarray:
        """Scores (B, N) of every item after each history."""
        (seq,) = _trim(torch.from_numpy(_pad_left(histories, self.cfg.max_len)))
        with _torch_threads(self.cfg.threads):
            hidden = self.model(seq)[:, -1]
            return self.model.logits(hidden).numpy()

    def retrieve(self, queries: Sequence[EvalQuery], k: int) -> list[list[int]]:
        return top_k_rows(self.scores([q.history for q in queries]), k, self.tie_key)


def _evaluate(
    retriever: SasRecRetriever, cases: Sequence[EvalCase], batch: int
) -> dict[str, float]:
    ranks = np.zeros(len(cases), dtype=np.int64)
    for start in range(0, len(cases), batch):
        chunk = cases[start : start + batch]
        s = retriever.scores([c.request.history for c in chunk])
        tgt = np.asarray([c.target for c in chunk])
        t_score = s[np.arange(len(chunk)), tgt][:, None]
        # Exactly equal float scores are practically absent here; count them as ranked ahead.
        ranks[start : start + len(chunk)] = (s >= t_score).sum(1)
    return {"recall@10": recall_at_k(ranks, 10), "ndcg@10": ndcg_at_k(ranks, 10)}


def train_sasrec(
    train_histories: Sequence[Sequence[int] | np.ndarray],
    num_items: int,
    valid_cases: Sequence[EvalCase],
    cfg: SasRecConfig | None = None,
    show_progress: bool = True,
    tie_key: np.ndarray | None = None,
) -> SasRecRetriever:
    """Train on the training histories; keep the best epoch on ``valid_cases`` NDCG@10."""
    cfg = cfg or SasRecConfig()
    with _torch_threads(cfg.threads):
        return _train(train_histories, num_items, valid_cases, cfg, show_progress, tie_key)


def _train(
    train_histories: Sequence[Sequence[int] | np.ndarray],
    num_items: int,
    valid_cases: Sequence[EvalCase],
    cfg: SasRecConfig,
    show_progress: bool,
    tie_key: np.ndarray | None,
) -> SasRecRetriever:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    # Every user sequence of >= 2 items gives (input = s[:-1], target = s[1:]) in one row.
    seqs = [list(h)[-(cfg.max_len + 1) :] for h in train_histories if len(h) >= 2]
    if not seqs:
        raise ValueError("SASRec needs at least one training history with two or more items")
    inputs = torch.from_numpy(_pad_left([s[:-1] for s in seqs], cfg.max_len))
    targets = torch.from_numpy(_pad_left([s[1:] for s in seqs], cfg.max_len)) - 1  # -1 = pad
    lengths = (inputs > 0).sum(1).numpy()

    model = SasRecModel(num_items, cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    retriever = SasRecRetriever(model, cfg, TrainReport(), tie_key)
    report = retriever.report
    best_key = (-1.0, -1.0)
    best_state = copy.deepcopy(model.state_dict())
    t0 = time.perf_counter()
    bar = tqdm(range(1, cfg.max_epochs + 1), desc="sasrec", unit="epoch", disable=not show_progress)
    for epoch in bar:
        model.train()
        total, count = 0.0, 0
        for batch in _length_buckets(lengths, cfg.batch_size, rng):
            idx = torch.from_numpy(batch)
            x, y = _trim(inputs[idx], targets[idx])
            hidden = model(x)
            keep = y >= 0  # only real next-item positions enter the softmax loss
            loss = F.cross_entropy(model.logits(hidden[keep]), y[keep])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * int(keep.sum())
            count += int(keep.sum())
        model.eval()
        valid = _evaluate(retriever, valid_cases, 1024)
        report.history.append({"epoch": epoch, "loss": total / max(count, 1), **valid})
        report.epochs_run = epoch
        key = (valid["ndcg@10"], valid["recall@10"])
        if key > best_key:
            best_key, report.best_epoch, report.best_valid = key, epoch, valid
            best_state = copy.deepcopy(model.state_dict())
        bar.set_postfix(
            loss=f"{total / max(count, 1):.3f}",
            r10=f"{valid['recall@10']:.4f}",
            best=report.best_epoch,
        )
        if epoch - report.best_epoch >= cfg.patience:
            report.stopped_by = "early stopping"
            break
        if cfg.max_seconds is not None and time.perf_counter() - t0 > cfg.max_seconds:
            report.stopped_by = "time cap"
            break
    else:
        report.stopped_by = "max epochs"
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    report.seconds = time.perf_counter() - t0
    return retriever
