"""ONNX export of the generator as two graphs, Triton layout, checked against PyTorch.

* ``generator_encoder``: token slots (Q, S, L), mask (Q, S) → ``cross_kv``
  (layers, 2, Q, heads, S, d_kv): the
  encoder runs once per query and every decoder layer's cross-attention K/V are projected
  once, here, instead of once per beam and step.
* ``generator_decoder``: one decoding step for all beams of all queries: last tokens (Q, B),
  the self-attention cache ``past`` (layers, 2, Q, B, heads, t, d_kv), ``cross_kv``, mask →
  ``logits`` (Q, B, V_dec) over the decoder vocabulary and ``new_kv`` (this step's K/V,
  (layers, 2, Q, B, heads, 1, d_kv)). Beams of a query attend to the query's single copy
  of the cross K/V (the beam axis plays the role of the query-length axis), so nothing is
  replicated per beam. The caller reorders the cache with the beams and appends ``new_kv``.

The same two modules run in PyTorch as :class:`TorchStepModel` (validation during training),
and are checked against Hugging Face's own T5 forward.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from transformers import T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention

from models_export.generator.model import embed_positions, output_scale
from models_export.triton import write_triton_config
from services.retrieval.beam_search import StepModel
from services.retrieval.encoding import DECODER_START_ID, TokenLayout
from services.retrieval.onnx_generator import DECODER_NAME, ENCODER_NAME, OnnxStepModel

OPSET = 17
_MASK_VALUE = -1e9


class EncoderKV(nn.Module):
    """Position embedding (summed token slots), T5 encoder, and every decoder layer's
    cross-attention K/V projection."""

    def __init__(self, model: T5ForConditionalGeneration) -> None:
        super().__init__()
        self.model = model
        self.encoder = model.encoder
        blocks: Any = model.decoder.block
        self.cross: Any = nn.ModuleList(b.layer[1].EncDecAttention for b in blocks)
        self.n_heads = model.config.num_heads
        self.d_kv = model.config.d_kv

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        embeds = embed_positions(self.model, input_ids)
        hidden = self.encoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        q, s = attention_mask.shape
        out = []
        for attn in self.cross:
            k = attn.k(hidden).view(q, s, self.n_heads, self.d_kv).transpose(1, 2)
            v = attn.v(hidden).view(q, s, self.n_heads, self.d_kv).transpose(1, 2)
            out.append(torch.stack([k, v]))
        return torch.stack(out)


class DecoderStep(nn.Module):
    """One cached decoding step of the T5 decoder, written out over HF's own weights."""

    def __init__(self, model: T5ForConditionalGeneration, decoder_vocab: int) -> None:
        super().__init__()
        cfg: Any = model.config
        self.embed = model.decoder.embed_tokens
        self.blocks: Any = model.decoder.block
        self.final_norm = model.decoder.final_layer_norm
        self.head = nn.Parameter(
            model.lm_head.weight[:decoder_vocab].detach().clone(), requires_grad=False
        )
        self.scale = output_scale(model)
        self.n_heads = cfg.num_heads
        self.d_kv = cfg.d_kv
        self.num_buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        first: Any = model.decoder.block[0]
        self.rel_bias: Any = first.layer[0].SelfAttention.relative_attention_bias

    def position_bias(self, t: int) -> torch.Tensor:
        """Bias (heads, t+1) of the query at position ``t`` over keys 0..t (causal buckets)."""
        memory = torch.arange(t + 1)  # traced from past.shape: dynamic in the ONNX graph
        bucket = T5Attention._relative_position_bucket(
            memory - t,
            bidirectional=False,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        bias: torch.Tensor = self.rel_bias(bucket).transpose(0, 1)
        return bias

    def forward(
        self,
        tokens: torch.Tensor,
        past: torch.Tensor,
        cross_kv: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        q, b = tokens.shape
        h, dk = self.n_heads, self.d_kv
        pos_bias = self.position_bias(past.shape[5])  # (H, t+1)
        enc_bias = (1.0 - attention_mask.to(torch.float32))[:, None, None, :] * _MASK_VALUE
        x = self.embed(tokens)
        new = []
        for i, block in enumerate(self.blocks):
            sa_layer, ca_layer, ff_layer = block.layer[0], block.layer[1], block.layer[2]
            sa = sa_layer.SelfAttention
            normed = sa_layer.layer_norm(x)
            qs = sa.q(normed).view(q, b, h, 1, dk)
            ks = sa.k(normed).view(q, b, h, 1, dk)
            vs = sa.v(normed).view(q, b, h, 1, dk)
            keys = torch.cat([past[i, 0], ks], dim=3)  # (Q, B, H, t+1, dk)
            values = torch.cat([past[i, 1], vs], dim=3)
            scores = torch.matmul(qs, keys.transpose(3, 4)) + pos_bias[:, None, :]
            weights = torch.softmax(scores.float(), dim=-1)
            att = torch.matmul(weights, values).reshape(q, b, h * dk)
            x = x + sa.o(att)
            ca = ca_layer.EncDecAttention
            normed = ca_layer.layer_norm(x)
            qc = ca.q(normed).view(q, b, h, dk).transpose(1, 2)  # (Q, H, B, dk)
            scores = torch.matmul(qc, cross_kv[i, 0].transpose(2, 3)) + enc_bias
            weights = torch.softmax(scores.float(), dim=-1)
            att = torch.matmul(weights, cross_kv[i, 1]).transpose(1, 2).reshape(q, b, h * dk)
            x = x + ca.o(att)
            x = ff_layer(x)
            new.append(torch.stack([ks, vs]))
        x = self.final_norm(x) * self.scale
        logits = torch.matmul(x, self.head.t())
        return logits, torch.stack(new)


class TorchStepModel:
    """:class:`services.retrieval.beam_search.StepModel` on PyTorch (offline validation)."""

    def __init__(self, model: T5ForConditionalGeneration, layout: TokenLayout) -> None:
        model.eval()
        self.encoder = EncoderKV(model).eval()
        self.decoder = DecoderStep(model, layout.decoder_vocab_size).eval()
        cfg: Any = model.config
        self.num_layers = int(cfg.num_decoder_layers)
        self.num_heads = int(cfg.num_heads)
        self.d_kv = int(cfg.d_kv)

    @torch.no_grad()
    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        out = self.encoder(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        return np.ascontiguousarray(out.numpy())

    @torch.no_grad()
    def step(
        self, tokens: np.ndarray, past: np.ndarray, cross_kv: np.ndarray, attention_mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        logits, new_kv = self.decoder(
            torch.from_numpy(tokens),
            torch.from_numpy(past),
            torch.from_numpy(cross_kv),
            torch.from_numpy(attention_mask),
        )
        return logits.numpy(), new_kv.numpy()


@dataclass(frozen=True, slots=True)
class ExportReport:
    encoder_path: Path
    decoder_path: Path
    max_abs_diff_cross_kv: float
    max_abs_diff_logits_vs_hf: float
    max_abs_diff_logits_onnx: float
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {
            "encoder": str(self.encoder_path),
            "decoder": str(self.decoder_path),
            "max_abs_diff_cross_kv_onnx_vs_torch": self.max_abs_diff_cross_kv,
            "max_abs_diff_step_logits_torch_vs_hf": self.max_abs_diff_logits_vs_hf,
            "max_abs_diff_step_logits_onnx_vs_hf": self.max_abs_diff_logits_onnx,
            "seconds": round(self.seconds, 2),
        }


def _example_inputs(
    model: T5ForConditionalGeneration,
    layout: TokenLayout,
    q: int = 2,
    s: int = 7,
    b: int = 3,
    t: int = 2,
    seed: int = 0,
) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, layout.vocab_size, (q, s, layout.depth), generator=gen)
    ids[:, : s // 2, 1:] = 0  # word-like positions: one token, pad slots
    mask = torch.ones(q, s, dtype=torch.long)
    mask[0, s - 2 :] = 0
    ids[0, s - 2 :] = 0
    cfg: Any = model.config
    nl, nh, dk = int(cfg.num_decoder_layers), int(cfg.num_heads), int(cfg.d_kv)
    past = torch.randn(nl, 2, q, b, nh, t, dk, generator=gen)
    tokens = torch.randint(3, layout.decoder_vocab_size, (q, b), generator=gen)
    return ids, mask, past, tokens


def hf_step_logits(
    model: T5ForConditionalGeneration,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    decoder_tokens: torch.Tensor,
) -> torch.Tensor:
    """Hugging Face's own logits (last position) for full decoder prefixes (N, t+1)."""
    with torch.no_grad():
        out = model(
            inputs_embeds=embed_positions(model, input_ids),
            attention_mask=attention_mask,
            decoder_input_ids=decoder_tokens,
            use_cache=False,
        )
    logits: torch.Tensor = out.logits[:, -1]
    return logits


def check_against_hf(
    model: T5ForConditionalGeneration,
    layout: TokenLayout,
    step_model: StepModel | None = None,
    seed: int = 0,
) -> float:
    """Max abs difference between ``step_model``'s cached step logits (default: the torch
    :class:`DecoderStep`) and Hugging Face's own uncached forward, over every step of
    random SID prefixes for random (partly padded) encoder inputs."""
    model.eval()
    ids, mask, _, _ = _example_inputs(model, layout, seed=seed)
    q = ids.shape[0]
    gen = torch.Generator().manual_seed(seed + 1)
    columns = [torch.full((q, 1), DECODER_START_ID, dtype=torch.long)]
    for level in range(layout.depth - 1):
        sl = layout.level_slice(level)
        columns.append(torch.randint(sl.start, sl.stop, (q, 1), generator=gen))
    prefix = torch.cat(columns, dim=1)
    runner: StepModel = TorchStepModel(model, layout) if step_model is None else step_model
    cross = runner.encode(ids.numpy(), mask.numpy())
    past = np.zeros(
        (runner.num_layers, 2, q, 1, runner.num_heads, 0, runner.d_kv), dtype=np.float32
    )
    worst = 0.0
    for t in range(prefix.shape[1]):
        logits, new_kv = runner.step(prefix[:, t : t + 1].numpy(), past, cross, mask.numpy())
        past = np.concatenate([past, new_kv], axis=5)
        hf = hf_step_logits(model, ids, mask, prefix[:, : t + 1])[:, : layout.decoder_vocab_size]
        worst = max(worst, float(np.max(np.abs(logits[:, 0] - hf.numpy()))))
    return worst


def export_onnx(
    model: T5ForConditionalGeneration, layout: TokenLayout, models_dir: Path
) -> ExportReport:
    """Write both graphs and their ``config.pbtxt``; verify them with ONNX Runtime."""
    t_start = time.perf_counter()
    model.eval()
    cfg: Any = model.config
    enc_mod = EncoderKV(model).eval()
    dec_mod = DecoderStep(model, layout.decoder_vocab_size).eval()
    ids, mask, past, tokens = _example_inputs(model, layout)
    enc_path = models_dir / ENCODER_NAME / "1" / "model.onnx"
    dec_path = models_dir / DECODER_NAME / "1" / "model.onnx"
    enc_path.parent.mkdir(parents=True, exist_ok=True)
    dec_path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        cross = enc_mod(ids, mask)
        torch.onnx.export(
            enc_mod,
            (ids, mask),
            str(enc_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input_ids", "attention_mask"],
            output_names=["cross_kv"],
            dynamic_axes={
                "input_ids": {0: "queries", 1: "source"},  # (Q, S, L) token slots
                "attention_mask": {0: "queries", 1: "source"},
                "cross_kv": {2: "queries", 4: "source"},
            },
        )
        torch.onnx.export(
            dec_mod,
            (tokens, past, cross, mask),
            str(dec_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["tokens", "past", "cross_kv", "attention_mask"],
            output_names=["logits", "new_kv"],
            dynamic_axes={
                "tokens": {0: "queries", 1: "beams"},
                "past": {2: "queries", 3: "beams", 5: "steps"},
                "cross_kv": {2: "queries", 4: "source"},
                "attention_mask": {0: "queries", 1: "source"},
                "logits": {0: "queries", 1: "beams"},
                "new_kv": {2: "queries", 3: "beams"},
            },
        )
    nl, nh, dk = int(cfg.num_decoder_layers), int(cfg.num_heads), int(cfg.d_kv)
    write_triton_config(
        models_dir / ENCODER_NAME / "config.pbtxt",
        name=ENCODER_NAME,
        inputs=[
            ("input_ids", "TYPE_INT64", [-1, -1, layout.depth]),
            ("attention_mask", "TYPE_INT64", [-1, -1]),
        ],
        outputs=[("cross_kv", "TYPE_FP32", [nl, 2, -1, nh, -1, dk])],
    )
    write_triton_config(
        models_dir / DECODER_NAME / "config.pbtxt",
        name=DECODER_NAME,
        inputs=[
            ("tokens", "TYPE_INT64", [-1, -1]),
            ("past", "TYPE_FP32", [nl, 2, -1, -1, nh, -1, dk]),
            ("cross_kv", "TYPE_FP32", [nl, 2, -1, nh, -1, dk]),
            ("attention_mask", "TYPE_INT64", [-1, -1]),
        ],
        outputs=[
            ("logits", "TYPE_FP32", [-1, -1, layout.decoder_vocab_size]),
            ("new_kv", "TYPE_FP32", [nl, 2, -1, -1, nh, 1, dk]),
        ],
    )
    # parity: ORT vs torch on other shapes than the export example, then ORT steps vs HF
    onnx_model = OnnxStepModel(enc_path, dec_path, intra_op_threads=1)
    ids2, mask2, _, _ = _example_inputs(model, layout, q=3, s=11, b=4, t=1, seed=5)
    with torch.no_grad():
        cross_t = enc_mod(ids2, mask2).numpy()
    diff_cross = float(np.max(np.abs(onnx_model.encode(ids2.numpy(), mask2.numpy()) - cross_t)))
    diff_torch = check_against_hf(model, layout)
    diff_onnx = check_against_hf(model, layout, onnx_model)
    return ExportReport(
        enc_path, dec_path, diff_cross, diff_torch, diff_onnx, time.perf_counter() - t_start
    )
