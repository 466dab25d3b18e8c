"""ONNX export of the generator as two graphs, Triton layout, checked against PyTorch.

* ``generator_encoder``: token slots (Q, S, L), mask (Q, S) → ``cross_key_i``,
  ``cross_value_i`` (Q, heads, S, d_kv) for every decoder layer i and ``cross_bias`` (Q, 1,
  1, S), the source mask as an additive bias: the encoder runs once per query and every
  decoder layer's cross-attention K/V are projected once, here, instead of once per beam and
  step (the bias, too, was five kernels per step).
* ``generator_decoder``: one decoding step for all beams of all queries: last tokens (Q, B),
  ``beam_rows`` (Q * B,), the encoder's outputs and the self-attention cache ``past_key_i``,
  ``past_value_i`` (rows, heads, t, d_kv) → ``logits`` (Q, B, V_dec) over the decoder
  vocabulary and the extended cache ``present_key_i``, ``present_value_i``
  (Q * B, heads, t + 1, d_kv). Row q * B + j of the present extends row ``beam_rows[q * B
  + j]`` of the past: the beam reorder is a Gather inside the graph, so the caller passes
  the present back as the next past and copies no K/V. Beams of a query attend to the
  query's single copy of the cross K/V (the beam axis plays the role of the query-length
  axis), so nothing is replicated per beam. K/V are separate tensors per layer: a packed
  (layers, 2, ...) tensor costs a Split/Squeeze on the way in and an Unsqueeze/Concat on
  the way out of every step.

The same two modules run in PyTorch as :class:`TorchStepModel` (validation during training),
and are checked against Hugging Face's own T5 forward.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn
from transformers import T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention

from models_export.generator.model import embed_positions, output_scale
from models_export.triton import write_triton_config
from services.retrieval.beam_search import StepModel
from services.retrieval.encoding import DECODER_START_ID, TokenLayout
from services.retrieval.onnx_generator import (
    CROSS_BIAS,
    DECODER_NAME,
    ENCODER_NAME,
    OnnxStepModel,
    cross_names,
    empty_kv_cache,
    kv_names,
)

OPSET = 17
_MASK_VALUE = -1e9


def max_steps(layout: TokenLayout) -> int:
    """Decoder steps the exported graph supports: one per SID level, plus two spare ones
    (the export's example inputs carry two cached steps whatever the depth)."""
    return layout.depth + 2


class EncoderKV(nn.Module):
    """Position embedding (summed token slots), T5 encoder, and every decoder layer's
    cross-attention K/V projection: ``cross_key_i``, ``cross_value_i`` per layer."""

    def __init__(self, model: T5ForConditionalGeneration) -> None:
        super().__init__()
        self.model = model
        self.encoder = model.encoder
        blocks: Any = model.decoder.block
        self.n_heads = model.config.num_heads
        self.d_kv = model.config.d_kv
        # every layer's K and V projections stacked: one MatMul instead of 2 per layer
        attn = [blk.layer[1].EncDecAttention for blk in blocks]
        stacked = torch.cat([w for a in attn for w in (a.k.weight, a.v.weight)])
        self.cross_kv = nn.Parameter(stacked.detach().clone(), requires_grad=False)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, ...]:
        embeds = embed_positions(self.model, input_ids)
        hidden = self.encoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
        q, s = attention_mask.shape
        kv = torch.matmul(hidden, self.cross_kv.t())  # (Q, S, layers * 2 * H * dk)
        inner = self.n_heads * self.d_kv
        bias = (1.0 - attention_mask.to(torch.float32))[:, None, None, :] * _MASK_VALUE
        return (
            *(
                part.reshape(q, s, self.n_heads, self.d_kv).transpose(1, 2)
                for part in kv.split(inner, dim=-1)
            ),
            bias,
        )


class DecoderStep(nn.Module):
    """One cached decoding step of the T5 decoder, written out over HF's own weights.

    ``forward(tokens, beam_rows, *cross, cross_bias, *past)``: ``cross`` and ``past`` are
    per layer (key, value, key, value, ...); ``beam_rows`` (Q * B,) names, for each
    beam, the row of ``past`` it extends (the beam reorder happens here, as a Gather).
    Returns the logits and the extended cache, per layer."""

    def __init__(
        self, model: T5ForConditionalGeneration, decoder_vocab: int, max_steps: int
    ) -> None:
        super().__init__()
        cfg: Any = model.config
        self.embed = model.decoder.embed_tokens
        self.blocks: Any = model.decoder.block
        self.final_norm = model.decoder.final_layer_norm
        self.head = nn.Parameter(
            model.lm_head.weight[:decoder_vocab].detach().clone(), requires_grad=False
        )
        self.scale = output_scale(model)
        self.n_layers = int(cfg.num_decoder_layers)
        self.n_heads = cfg.num_heads
        self.d_kv = cfg.d_kv
        self.num_buckets = cfg.relative_attention_num_buckets
        self.max_distance = cfg.relative_attention_max_distance
        first: Any = model.decoder.block[0]
        rel_bias: Any = first.layer[0].SelfAttention.relative_attention_bias
        # the self-attention position bias of every step, computed here once: in the graph
        # the bucket arithmetic was ~20 small kernels per step; now it is a row lookup
        table = torch.zeros(max_steps, self.n_heads, max_steps)
        with torch.no_grad():
            for t in range(max_steps):
                table[t, :, : t + 1] = self.position_bias(rel_bias, t)
        self.register_buffer("bias_table", table, persistent=False)
        # each layer's Q, K and V projections stacked: one MatMul instead of three
        blocks: Any = model.decoder.block
        self.qkv = nn.ParameterList(
            nn.Parameter(torch.cat([w.q.weight, w.k.weight, w.v.weight]).detach().clone(), False)
            for w in (blk.layer[0].SelfAttention for blk in blocks)
        )

    def position_bias(self, rel_bias: nn.Embedding, t: int) -> torch.Tensor:
        """Bias (heads, t+1) of the query at position ``t`` over keys 0..t (causal buckets)."""
        memory = torch.arange(t + 1)
        bucket = T5Attention._relative_position_bucket(
            memory - t,
            bidirectional=False,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        bias: torch.Tensor = rel_bias(bucket).transpose(0, 1)
        return bias

    def forward(
        self,
        tokens: torch.Tensor,
        beam_rows: torch.Tensor,
        *kv: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        n = self.n_layers
        cross, enc_bias, past = kv[: 2 * n], kv[2 * n], kv[2 * n + 1 :]
        q, b = tokens.shape
        h, dk = self.n_heads, self.d_kv
        t = past[0].shape[2]  # traced from the past's shape: dynamic in the graph
        table = cast(torch.Tensor, self.bias_table)
        pos_bias = table[t, :, : t + 1][:, None, :]  # (H, 1, t+1)
        # the hidden state stays (1, Q * B, d): row-wise ops need no shape, and the reshapes
        # below use constant shapes (no shape arithmetic kernels in the graph)
        x = self.embed(tokens.reshape(1, -1))
        present: list[torch.Tensor] = []
        for i, block in enumerate(self.blocks):
            sa_layer, ca_layer, ff_layer = block.layer[0], block.layer[1], block.layer[2]
            sa = sa_layer.SelfAttention
            qkv = torch.matmul(sa_layer.layer_norm(x), self.qkv[i].t())  # (1, Q*B, 3 * H * dk)
            qs, ks, vs = qkv.reshape(-1, 3 * h, 1, dk).split(h, dim=1)  # (Q*B, H, 1, dk) each
            keys = torch.cat([past[2 * i].index_select(0, beam_rows), ks], 2)  # (Q*B, H, t+1, dk)
            values = torch.cat([past[2 * i + 1].index_select(0, beam_rows), vs], 2)
            scores = torch.matmul(qs, keys.transpose(2, 3)) + pos_bias
            weights = torch.softmax(scores.float(), dim=-1)
            att = torch.matmul(weights, values).reshape(1, -1, h * dk)
            x = x + sa.o(att)
            ca = ca_layer.EncDecAttention
            normed = ca_layer.layer_norm(x)
            qc = ca.q(normed).reshape(q, -1, h, dk).transpose(1, 2)  # (Q, H, B, dk)
            scores = torch.matmul(qc, cross[2 * i].transpose(2, 3)) + enc_bias
            weights = torch.softmax(scores.float(), dim=-1)
            att = torch.matmul(weights, cross[2 * i + 1]).transpose(1, 2).reshape(1, -1, h * dk)
            x = x + ca.o(att)
            x = ff_layer(x)
            present += [keys, values]
        x = self.final_norm(x) * self.scale
        logits = torch.matmul(x, self.head.t()).reshape(q, b, self.head.shape[0])
        return (logits, *present)


class TorchStepModel:
    """:class:`services.retrieval.beam_search.StepModel` on PyTorch (offline validation)."""

    def __init__(self, model: T5ForConditionalGeneration, layout: TokenLayout) -> None:
        model.eval()
        self.encoder = EncoderKV(model).eval()
        self.decoder = DecoderStep(model, layout.decoder_vocab_size, max_steps(layout)).eval()
        cfg: Any = model.config
        self.num_layers = int(cfg.num_decoder_layers)
        self.num_heads = int(cfg.num_heads)
        self.d_kv = int(cfg.d_kv)

    @torch.no_grad()
    def encode(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> list[np.ndarray]:
        out = self.encoder(torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        return [np.ascontiguousarray(t.numpy()) for t in out]

    def empty_cache(self, rows: int) -> list[np.ndarray]:
        return empty_kv_cache(self.num_layers, self.num_heads, self.d_kv, rows)

    @torch.no_grad()
    def step(
        self,
        tokens: np.ndarray,
        beam_rows: np.ndarray,
        cache: Sequence[np.ndarray],
        cross: Sequence[np.ndarray],
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        out = self.decoder(
            torch.from_numpy(tokens),
            torch.from_numpy(beam_rows),
            *(torch.from_numpy(np.asarray(a)) for a in (*cross, *cache)),
        )
        return out[0].numpy(), [t.numpy() for t in out[1:]]


@dataclass(frozen=True, slots=True)
class ExportReport:
    encoder_path: Path
    decoder_path: Path
    max_abs_diff_cross_kv: float
    max_abs_diff_step: float  # logits and extended cache, ONNX vs torch, reordered rows
    max_abs_diff_logits_vs_hf: float
    max_abs_diff_logits_onnx: float
    seconds: float

    def to_dict(self) -> dict[str, object]:
        return {
            "encoder": str(self.encoder_path),
            "decoder": str(self.decoder_path),
            "max_abs_diff_cross_kv_onnx_vs_torch": self.max_abs_diff_cross_kv,
            "max_abs_diff_step_onnx_vs_torch": self.max_abs_diff_step,
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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Encoder inputs (ids, mask) and a decoder step's (tokens, beam_rows, past) for Q
    queries of B beams; ``beam_rows`` reorders and repeats the past's rows, as beams do."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, layout.vocab_size, (q, s, layout.depth), generator=gen)
    ids[:, : s // 2, 1:] = 0  # word-like positions: one token, pad slots
    mask = torch.ones(q, s, dtype=torch.long)
    mask[0, s - 2 :] = 0
    ids[0, s - 2 :] = 0
    cfg: Any = model.config
    nl, nh, dk = int(cfg.num_decoder_layers), int(cfg.num_heads), int(cfg.d_kv)
    rows_in = q * (b + 1)  # the previous step had one beam more
    past = [torch.randn(rows_in, nh, t, dk, generator=gen) for _ in range(2 * nl)]
    beam_rows = torch.randint(0, rows_in, (q * b,), generator=gen)
    tokens = torch.randint(3, layout.decoder_vocab_size, (q, b), generator=gen)
    return ids, mask, tokens, beam_rows, past


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
    random SID prefixes for random (partly padded) encoder inputs. The cache rows are
    shuffled between steps (``beam_rows``), so a wrong reorder shows as a difference."""
    model.eval()
    ids, mask, _, _, _ = _example_inputs(model, layout, seed=seed)
    q = ids.shape[0]
    gen = torch.Generator().manual_seed(seed + 1)
    columns = [torch.full((q, 1), DECODER_START_ID, dtype=torch.long)]
    for level in range(layout.depth - 1):
        sl = layout.level_slice(level)
        columns.append(torch.randint(sl.start, sl.stop, (q, 1), generator=gen))
    prefix = torch.cat(columns, dim=1)
    runner: StepModel = TorchStepModel(model, layout) if step_model is None else step_model
    cross = runner.encode(ids.numpy(), mask.numpy())
    cache = runner.empty_cache(q)
    where = np.arange(q)  # row of query i's hypothesis in ``cache``
    worst = 0.0
    rng = np.random.default_rng(seed)
    for t in range(prefix.shape[1]):
        logits, cache = runner.step(prefix[:, t : t + 1].numpy(), where, cache, cross)
        hf = hf_step_logits(model, ids, mask, prefix[:, : t + 1])[:, : layout.decoder_vocab_size]
        worst = max(worst, float(np.max(np.abs(logits[:, 0] - hf.numpy()))))
        perm = rng.permutation(q)  # shuffle the rows: the next step must gather them back
        cache = [np.ascontiguousarray(a[perm]) for a in cache]
        where = np.argsort(perm)
    return worst


def fuse_norms(path: Path) -> None:
    """Rewrite the graph at ``path`` with ONNX Runtime's T5 fusions of the RMS norms: each
    residual Add + norm becomes one ``SkipSimplifiedLayerNormalization`` (ORT's own graph
    optimiser fuses the norm but not the Add: a decoder step was ~150 kernels, each a few
    microseconds at batch 1). Attention fusion stays off: it expects HF's own T5 graph, not
    this one's shared cross K/V and in-graph beam reorder."""
    from onnxruntime.transformers import optimizer
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("t5")
    options.enable_attention = False
    fused = optimizer.optimize_model(
        str(path),
        model_type="t5",
        num_heads=0,  # only attention fusion reads these
        hidden_size=0,
        opt_level=0,
        optimization_options=options,
    )
    fused.save_model_to_file(str(path))


def export_onnx(
    model: T5ForConditionalGeneration, layout: TokenLayout, models_dir: Path
) -> ExportReport:
    """Write both graphs and their ``config.pbtxt``; verify them with ONNX Runtime."""
    t_start = time.perf_counter()
    model.eval()
    cfg: Any = model.config
    nl, nh, dk = int(cfg.num_decoder_layers), int(cfg.num_heads), int(cfg.d_kv)
    enc_mod = EncoderKV(model).eval()
    dec_mod = DecoderStep(model, layout.decoder_vocab_size, max_steps(layout)).eval()
    ids, mask, tokens, beam_rows, past = _example_inputs(model, layout)
    enc_path = models_dir / ENCODER_NAME / "1" / "model.onnx"
    dec_path = models_dir / DECODER_NAME / "1" / "model.onnx"
    enc_path.parent.mkdir(parents=True, exist_ok=True)
    dec_path.parent.mkdir(parents=True, exist_ok=True)
    enc_names, past_names = cross_names(nl), kv_names("past", nl)
    present_names = kv_names("present", nl)
    cross_axes = {0: "queries", 2: "source"}
    with torch.no_grad():
        cross = enc_mod(ids, mask)
        torch.onnx.export(
            enc_mod,
            (ids, mask),
            str(enc_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input_ids", "attention_mask"],
            output_names=enc_names,
            dynamic_axes={
                "input_ids": {0: "queries", 1: "source"},  # (Q, S, L) token slots
                "attention_mask": {0: "queries", 1: "source"},
                **{name: cross_axes for name in enc_names[:-1]},
                CROSS_BIAS: {0: "queries", 3: "source"},
            },
        )
        torch.onnx.export(
            dec_mod,
            (tokens, beam_rows, *cross, *past),
            str(dec_path),
            dynamo=False,
            opset_version=OPSET,
            input_names=["tokens", "beam_rows", *enc_names, *past_names],
            output_names=["logits", *present_names],
            dynamic_axes={
                "tokens": {0: "queries", 1: "beams"},
                "beam_rows": {0: "hypotheses"},
                **{name: cross_axes for name in enc_names[:-1]},
                CROSS_BIAS: {0: "queries", 3: "source"},
                **{name: {0: "past_rows", 2: "steps"} for name in past_names},
                "logits": {0: "queries", 1: "beams"},
                **{name: {0: "hypotheses", 2: "steps_plus_one"} for name in present_names},
            },
        )
    for path in (enc_path, dec_path):
        fuse_norms(path)
    write_triton_config(
        models_dir / ENCODER_NAME / "config.pbtxt",
        name=ENCODER_NAME,
        inputs=[
            ("input_ids", "TYPE_INT64", [-1, -1, layout.depth]),
            ("attention_mask", "TYPE_INT64", [-1, -1]),
        ],
        outputs=[
            *((name, "TYPE_FP32", [-1, nh, -1, dk]) for name in enc_names[:-1]),
            (CROSS_BIAS, "TYPE_FP32", [-1, 1, 1, -1]),
        ],
    )
    write_triton_config(
        models_dir / DECODER_NAME / "config.pbtxt",
        name=DECODER_NAME,
        inputs=[
            ("tokens", "TYPE_INT64", [-1, -1]),
            ("beam_rows", "TYPE_INT64", [-1]),
            *((name, "TYPE_FP32", [-1, nh, -1, dk]) for name in enc_names[:-1]),
            (CROSS_BIAS, "TYPE_FP32", [-1, 1, 1, -1]),
            *((name, "TYPE_FP32", [-1, nh, -1, dk]) for name in past_names),
        ],
        outputs=[
            ("logits", "TYPE_FP32", [-1, -1, layout.decoder_vocab_size]),
            *((name, "TYPE_FP32", [-1, nh, -1, dk]) for name in present_names),
        ],
    )
    # parity: ORT vs torch on other shapes than the export example, then ORT steps vs HF
    onnx_model = OnnxStepModel(enc_path, dec_path, intra_op_threads=1)
    ids2, mask2, tokens2, rows2, past2 = _example_inputs(model, layout, q=3, s=11, b=4, t=1, seed=5)
    with torch.no_grad():
        cross_torch = enc_mod(ids2, mask2)
        cross_t = [a.numpy() for a in cross_torch]
        step_t = [a.numpy() for a in dec_mod(tokens2, rows2, *cross_torch, *past2)]
    cross_o = onnx_model.encode(ids2.numpy(), mask2.numpy())
    diff_cross = max(float(np.max(np.abs(a - b))) for a, b in zip(cross_o, cross_t, strict=True))
    logits_o, present_o = onnx_model.step(
        tokens2.numpy(), rows2.numpy(), [a.numpy() for a in past2], cross_o
    )
    diff_step = max(
        float(np.max(np.abs(a - b))) for a, b in zip([logits_o, *present_o], step_t, strict=True)
    )
    diff_torch = check_against_hf(model, layout)
    diff_onnx = check_against_hf(model, layout, onnx_model)
    return ExportReport(
        enc_path,
        dec_path,
        diff_cross,
        diff_step,
        diff_torch,
        diff_onnx,
        time.perf_counter() - t_start,
    )
