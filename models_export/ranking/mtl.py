"""The multi-task ranker: MMoE (shared experts, one softmax gate per task) over candidate,
query, cross and user-interest features; the interest is target attention over the
user's recent items, guided by the query (the attention key is candidate + query).

Trained with one binary cross-entropy per objective on the ``rank_train`` lists, early
stopping on the ``tune`` lists' mean GAUC; exported to ONNX (the item embedding table
is a constant of the graph, so the service feeds item rows, not vectors).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models_export.ranking.metrics import gauc
from models_export.triton import write_triton_config
from services.ranking.features import MAX_HISTORY, NUM_DENSE, FeatureSpec, RankInputs, stack
from services.ranking.fusion import PREDICTED
from services.ranking.model import RANKER_MODEL, RANKER_MODEL_NAME

INPUT_NAMES = ["dense", "item_row", "item_cat3", "item_brand", "history", "query", "candidate_mask"]


@dataclass(frozen=True, slots=True)
class MtlConfig:
    dim: int = 32
    experts: int = 4
    expert_hidden: int = 64
    tower_hidden: int = 32
    epochs: int = 8
    batch_lists: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-5
    patience: int = 2
    listwise_weight: float = 1.0
    seed: int = 7

    @classmethod
    def for_mode(cls, quick: bool) -> MtlConfig:
        return cls(epochs=6, dim=16, expert_hidden=32, batch_lists=16) if quick else cls()


class RankerNet(nn.Module):
    """MMoE with query-guided target attention; outputs [B, C, tasks] probabilities."""

    def __init__(self, item_vectors: np.ndarray, spec: FeatureSpec, config: MtlConfig) -> None:
        super().__init__()
        d = config.dim
        vecs = np.vstack([item_vectors, np.zeros((1, item_vectors.shape[1]), np.float32)])
        self.item_vec: torch.Tensor
        self.item_cat3_table: torch.Tensor
        self.register_buffer("item_vec", torch.from_numpy(vecs.astype(np.float32)))
        cat3 = np.append(spec.item_cat3, 0).astype(np.int64)
        self.register_buffer("item_cat3_table", torch.from_numpy(cat3))
        self.pad = int(item_vectors.shape[0])
        self.item_proj = nn.Linear(item_vectors.shape[1], d)
        self.query_proj = nn.Linear(item_vectors.shape[1], d)
        self.cat3_emb = nn.Embedding(len(spec.cat3_names), d)
        self.brand_emb = nn.Embedding(len(spec.brand_names), d)
        width = NUM_DENSE + 5 * d
        self.experts = nn.ModuleList(
            nn.Sequential(
                nn.Linear(width, config.expert_hidden),
                nn.ReLU(),
                nn.Linear(config.expert_hidden, config.expert_hidden),
                nn.ReLU(),
            )
            for _ in range(config.experts)
        )
        tasks = len(PREDICTED)
        self.gates = nn.ModuleList(nn.Linear(width, config.experts) for _ in range(tasks))
        self.towers = nn.ModuleList(
            nn.Sequential(
                nn.Linear(config.expert_hidden, config.tower_hidden),
                nn.ReLU(),
                nn.Linear(config.tower_hidden, 1),
            )
            for _ in range(tasks)
        )
        self.scale = float(d) ** -0.5

    def logits(
        self,
        dense: torch.Tensor,
        item_row: torch.Tensor,
        item_cat3: torch.Tensor,
        item_brand: torch.Tensor,
        history: torch.Tensor,
        query: torch.Tensor,
    ) -> torch.Tensor:
        rows = torch.where(item_row < 0, torch.full_like(item_row, self.pad), item_row)
        item = (
            self.item_proj(self.item_vec[rows])
            + self.cat3_emb(item_cat3)
            + self.brand_emb(item_brand)
        )  # [B, C, d]
        hist_rows = torch.where(history < 0, torch.full_like(history, self.pad), history)
        hist = self.item_proj(self.item_vec[hist_rows]) + self.cat3_emb(
            self.item_cat3_table[hist_rows]
        )  # [B, H, d]
        hist_mask = (history >= 0).to(dense.dtype)  # [B, H]
        q = self.query_proj(query)  # [B, d]
        key = item + q.unsqueeze(1)
        att = torch.einsum("bcd,bhd->bch", key, hist) * self.scale
        att = att + (hist_mask.unsqueeze(1) - 1.0) * 1e4
        att = torch.softmax(att, dim=-1) * hist_mask.unsqueeze(1)
        interest = torch.einsum("bch,bhd->bcd", att, hist)
        qc = q.unsqueeze(1).expand_as(item)
        x = torch.cat([dense, item, qc, interest, item * qc, item * interest], dim=-1)
        expert_out = torch.stack([e(x) for e in self.experts], dim=-2)  # [B, C, E, h]
        outs = []
        for gate, tower in zip(self.gates, self.towers, strict=True):
            g = torch.softmax(gate(x), dim=-1).unsqueeze(-1)  # [B, C, E, 1]
            outs.append(tower((expert_out * g).sum(dim=-2)))
        return torch.cat(outs, dim=-1)  # [B, C, T]

    def forward(
        self,
        dense: torch.Tensor,
        item_row: torch.Tensor,
        item_cat3: torch.Tensor,
        item_brand: torch.Tensor,
        history: torch.Tensor,
        query: torch.Tensor,
        candidate_mask: torch.Tensor,
    ) -> torch.Tensor:
        logits = self.logits(dense, item_row, item_cat3, item_brand, history, query)
        return torch.sigmoid(logits) * candidate_mask.unsqueeze(-1)


@dataclass(slots=True)
class TrainedRanker:
    net: RankerNet
    seconds: float
    epochs_run: int
    best_tune_gauc: float
    history: list[dict[str, float]]


def _tensors(feeds: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in feeds.items()}


def predict(net: RankerNet, lists: Sequence[RankInputs], batch: int = 256) -> list[np.ndarray]:
    """[C, tasks] probabilities per list (torch; the ONNX export is checked against it)."""
    net.eval()
    out: list[np.ndarray] = []
    with torch.no_grad():
        for start in range(0, len(lists), batch):
            chunk = list(lists[start : start + batch])
            probs = net(**_tensors(stack(chunk))).numpy()
            out.extend(probs[i, : len(x.item_row)] for i, x in enumerate(chunk))
    return out


def mean_gauc(probs: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> float:
    return float(
        np.mean(
            [
                gauc([p[:, t] for p in probs], [y[:, t] for y in labels])
                for t in range(len(PREDICTED))
            ]
        )
    )


def train_ranker(
    spec: FeatureSpec,
    item_vectors: np.ndarray,
    train: Sequence[RankInputs],
    train_labels: Sequence[np.ndarray],
    tune: Sequence[RankInputs],
    tune_labels: Sequence[np.ndarray],
    config: MtlConfig,
) -> TrainedRanker:
    """Fit on ``train``; keep the epoch with the best ``tune`` mean GAUC."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    net = RankerNet(item_vectors, spec, config)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    bce = nn.BCEWithLogitsLoss(reduction="none")
    start = time.perf_counter()
    best, best_state, stale, history = -1.0, None, 0, []
    epochs = 0
    for epoch in range(config.epochs):
        epochs += 1
        net.train()
        order = rng.permutation(len(train))
        total = 0.0
        bar = tqdm(range(0, len(order), config.batch_lists), desc=f"ranker epoch {epoch + 1}")
        for s in bar:
            idx = order[s : s + config.batch_lists]
            feeds = _tensors(stack([train[i] for i in idx]))
            width = feeds["dense"].shape[1]
            y = np.zeros((len(idx), width, len(PREDICTED)), dtype=np.float32)
            for j, i in enumerate(idx):
                y[j, : len(train_labels[i])] = train_labels[i]
            mask = feeds.pop("candidate_mask")
            logits = net.logits(**feeds)
            target = torch.from_numpy(y)
            loss = (bce(logits, target) * mask.unsqueeze(-1)).sum() / mask.sum()
            # listwise softmax cross-entropy on the conversion logits: NDCG rewards the
            # order within a list, which pointwise BCE alone does not aim at
            conv = logits[..., 0] + (mask - 1.0) * 1e4
            hit = target[..., 0].sum(-1) > 0
            if bool(hit.any()):
                log_soft = torch.log_softmax(conv, dim=-1)
                listwise = -(log_soft * target[..., 0]).sum(-1)[hit].mean()
                loss = loss + config.listwise_weight * listwise
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        score = mean_gauc(predict(net, tune), tune_labels) if tune else 0.0
        history.append({"epoch": epoch + 1, "loss": total / max(len(train), 1), "tune_gauc": score})
        if score > best + 1e-5:
            best, stale = score, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        net.load_state_dict(best_state)
    return TrainedRanker(net, time.perf_counter() - start, epochs, best, history)


def export_ranker(net: RankerNet, sample: Sequence[RankInputs], version_dir: Path) -> Path:
    """ONNX with dynamic batch and candidate axes; a Triton ``config.pbtxt`` beside it."""
    path = version_dir / RANKER_MODEL
    path.parent.mkdir(parents=True, exist_ok=True)
    net.eval()
    feeds = _tensors(stack(list(sample)))
    per_candidate = {0: "batch", 1: "candidates"}
    dyn = {n: per_candidate for n in INPUT_NAMES if n not in ("history", "query")}
    dyn |= {"history": {0: "batch"}, "query": {0: "batch"}, "probabilities": per_candidate}
    with torch.no_grad():
        torch.onnx.export(
            net,
            tuple(feeds[n] for n in INPUT_NAMES),
            str(path),
            input_names=INPUT_NAMES,
            output_names=["probabilities"],
            dynamic_axes=dyn,
            opset_version=17,
            dynamo=False,
        )
    query_dim = int(feeds["query"].shape[1])
    write_triton_config(
        path.parent.parent / "config.pbtxt",
        name=RANKER_MODEL_NAME,
        inputs=[
            ("dense", "TYPE_FP32", [-1, NUM_DENSE]),
            ("item_row", "TYPE_INT64", [-1]),
            ("item_cat3", "TYPE_INT64", [-1]),
            ("item_brand", "TYPE_INT64", [-1]),
            ("history", "TYPE_INT64", [MAX_HISTORY]),
            ("query", "TYPE_FP32", [query_dim]),
            ("candidate_mask", "TYPE_FP32", [-1]),
        ],
        outputs=[("probabilities", "TYPE_FP32", [-1, len(PREDICTED)])],
        max_batch_size=64,
    )
    return path
