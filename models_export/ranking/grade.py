"""GRADE fusion training: global weights, then a personalised weight policy.

1. **Global weights** (the baseline GRADE improves on): every weight vector of a simplex
   grid, both blends and a few relevance floors, scored by the NDCG@10 of the true target
   on the ``tune`` lists; the best is kept.
2. **Imitation**: the policy network (context → softmax weights) is first trained to
   output the global weights for everyone (cross-entropy to them), and frozen as the
   reference policy.
3. **Group-relative exploration** (as the GRADE paper describes): per list, a group of
   weight vectors is sampled from Dirichlet(κ · policy output); each is scored by the
   blended ranking's NDCG@10 of the target; the advantage is the reward standardised
   within the group; the loss is the policy gradient of the Dirichlet log-density plus
   β · KL(reference ‖ policy) on the mean weights. Lists whose target the retriever
   missed carry no signal and are left out. The epoch with the best ``tune`` NDCG@10 of
   the policy's own (mean) weights is kept.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models_export.triton import write_triton_config
from services.ranking.fusion import (
    BLENDS,
    OBJECTIVES,
    blend_basis,
    floor_penalty,
    simplex_grid,
)
from services.ranking.policy import NUM_CONTEXT, POLICY_MODEL, POLICY_MODEL_NAME

FLOORS: tuple[float, ...] = (0.0, 0.01, 0.02, 0.05, 0.1)
_EPS = 1e-6


@dataclass(frozen=True, slots=True)
class GradeConfig:
    grid_step: float = 0.1
    hidden: int = 32
    imitation_steps: int = 300
    epochs: int = 6
    batch_lists: int = 64
    group: int = 16
    concentration: float = 40.0
    kl_weight: float = 0.05
    lr: float = 3e-3
    seed: int = 11

    @classmethod
    def for_mode(cls, quick: bool) -> GradeConfig:
        return cls(grid_step=0.25, imitation_steps=100, epochs=2) if quick else cls()


@dataclass(slots=True)
class ScoredList:
    """One list's objective scores, target position (-1: missed) and context."""

    scores: np.ndarray  # [C, T]
    target: int
    context: np.ndarray  # [NUM_CONTEXT]
    _base: dict[str, np.ndarray] = field(default_factory=dict)

    def base(self, blend: str) -> np.ndarray:
        """The list's blend basis (``services.ranking.fusion.blend_basis``), cached."""
        if blend not in self._base:
            self._base[blend] = blend_basis(self.scores, blend)
        return self._base[blend]


def list_ndcg(
    lst: ScoredList, weights: np.ndarray, blend: str, floor: float, k: int = 10
) -> np.ndarray:
    """NDCG@k of the target under each weight vector of ``weights`` [G, T] -> [G]."""
    if lst.target < 0:
        return np.zeros(len(weights))
    key = lst.base(blend) @ weights.T  # [C, G]
    key = key + floor_penalty(lst.scores, floor)[:, None]
    rank = (key > key[lst.target]).sum(axis=0)
    return np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)


@dataclass(slots=True)
class GlobalChoice:
    weights: np.ndarray
    blend: str
    floor: float
    tune_ndcg: float
    table: list[dict[str, Any]]


def choose_global(lists: Sequence[ScoredList], config: GradeConfig) -> GlobalChoice:
    """The best (weights, blend, floor) on ``lists`` by mean NDCG@10 of the target."""
    grid = simplex_grid(len(OBJECTIVES), config.grid_step)
    best: GlobalChoice | None = None
    table = []
    for blend in BLENDS:
        for floor in FLOORS:
            mean = np.mean([list_ndcg(lst, grid, blend, floor) for lst in lists], axis=0)
            g = int(mean.argmax())
            table.append(
                {
                    "blend": blend,
                    "floor": floor,
                    "weights": grid[g].round(3).tolist(),
                    "tune_ndcg@10": round(float(mean[g]), 5),
                }
            )
            if best is None or mean[g] > best.tune_ndcg + 1e-12:
                best = GlobalChoice(grid[g], blend, floor, float(mean[g]), [])
    assert best is not None
    best.table = table
    return best


class PolicyNet(nn.Module):
    """Context → objective weights on the simplex."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(NUM_CONTEXT, hidden), nn.Tanh(), nn.Linear(hidden, len(OBJECTIVES))
        )

    def forward(self, context: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.body(context), dim=-1)


@dataclass(slots=True)
class TrainedPolicy:
    net: PolicyNet
    seconds: float
    history: list[dict[str, float]]
    tune_ndcg: float
    reference_tune_ndcg: float


def policy_ndcg(net: PolicyNet, lists: Sequence[ScoredList], blend: str, floor: float) -> float:
    """Mean NDCG@10 of the target when each list is blended with the policy's weights."""
    if not lists:
        return 0.0
    with torch.no_grad():
        w = net(torch.from_numpy(np.stack([x.context for x in lists]))).numpy().astype(np.float64)
    return float(
        np.mean([list_ndcg(x, w[i : i + 1], blend, floor)[0] for i, x in enumerate(lists)])
    )


def train_policy(
    train: Sequence[ScoredList],
    tune: Sequence[ScoredList],
    choice: GlobalChoice,
    config: GradeConfig,
) -> TrainedPolicy:
    """Imitation of the global weights, then group-relative exploration with a KL term."""
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    start = time.perf_counter()
    net = PolicyNet(config.hidden)
    contexts = torch.from_numpy(np.stack([x.context for x in train]))
    target_w = torch.from_numpy(choice.weights.astype(np.float32)).expand(len(train), -1)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    for _ in tqdm(range(config.imitation_steps), desc="GRADE imitation"):
        loss = -(target_w * torch.log(net(contexts) + _EPS)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    reference = PolicyNet(config.hidden)
    reference.load_state_dict(net.state_dict())
    reference.eval()
    ref_score = policy_ndcg(reference, tune, choice.blend, choice.floor)
    best_score, best_state = ref_score, {k: v.clone() for k, v in net.state_dict().items()}
    history: list[dict[str, float]] = [{"epoch": 0, "tune_ndcg@10": ref_score}]
    useful = [x for x in train if x.target >= 0]
    for epoch in range(config.epochs):
        order = rng.permutation(len(useful))
        for s in tqdm(range(0, len(order), config.batch_lists), desc=f"GRADE epoch {epoch + 1}"):
            batch = [useful[i] for i in order[s : s + config.batch_lists]]
            ctx = torch.from_numpy(np.stack([x.context for x in batch]))
            mean = net(ctx)
            alpha = mean * config.concentration + 1e-3
            dist = torch.distributions.Dirichlet(alpha)
            samples = dist.sample((config.group,))  # [G, B, T]
            logp = dist.log_prob(samples)  # [G, B]
            w = samples.numpy().astype(np.float64)
            rewards = np.stack(
                [list_ndcg(x, w[:, i], choice.blend, choice.floor) for i, x in enumerate(batch)],
                axis=1,
            )  # [G, B]
            adv = (rewards - rewards.mean(0)) / (rewards.std(0) + _EPS)
            with torch.no_grad():
                ref = reference(ctx)
            kl = (ref * (torch.log(ref + _EPS) - torch.log(mean + _EPS))).sum(-1).mean()
            loss = -(torch.from_numpy(adv.astype(np.float32)) * logp).mean() + config.kl_weight * kl
            opt.zero_grad()
            loss.backward()
            opt.step()
        score = policy_ndcg(net, tune, choice.blend, choice.floor)
        history.append({"epoch": epoch + 1, "tune_ndcg@10": score})
        if score > best_score + 1e-9:
            best_score, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
    net.load_state_dict(best_state)
    net.eval()
    return TrainedPolicy(net, time.perf_counter() - start, history, best_score, ref_score)


def export_policy(net: PolicyNet, version_dir: Path) -> Path:
    """ONNX: ``context`` [B, NUM_CONTEXT] -> ``weights`` [B, T]; Triton config beside it."""
    path = version_dir / POLICY_MODEL
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            net.eval(),
            (torch.zeros(2, NUM_CONTEXT),),
            str(path),
            input_names=["context"],
            output_names=["weights"],
            dynamic_axes={"context": {0: "batch"}, "weights": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    write_triton_config(
        path.parent.parent / "config.pbtxt",
        name=POLICY_MODEL_NAME,
        inputs=[("context", "TYPE_FP32", [NUM_CONTEXT])],
        outputs=[("weights", "TYPE_FP32", [len(OBJECTIVES)])],
        max_batch_size=256,
    )
    return path
