"""The generator: a small Hugging Face T5 (TIGER-style) over the shared token layout.

It stays a stock ``T5ForConditionalGeneration`` so Hugging Face's own ``generate`` can decode
the same weights (the reference in the benchmark). Training scores each SID level only over
the tokens the trie allows after the target's prefix (``trie`` normalisation), which is
exactly how the constrained beam search scores hypotheses; ``level`` normalisation (softmax
over the level's codebook) is available for comparison.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812
from transformers import T5Config, T5ForConditionalGeneration

from services.retrieval.encoding import DECODER_START_ID, EOS_ID, PAD_ID, TokenLayout
from services.retrieval.trie import SidTrie

Normalisation = Literal["trie", "level"]


@dataclass(frozen=True, slots=True)
class Architecture:
    """T5 sizes. ``reference`` is the published TIGER-style size used by the benchmark."""

    d_model: int = 128
    d_kv: int = 32
    num_heads: int = 4
    num_layers: int = 2
    num_decoder_layers: int = 2
    d_ff: int = 512
    dropout: float = 0.0  # few epochs fit in the CPU budget: under-, not over-fitting

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRESETS: dict[str, Architecture] = {
    # TIGER-style reference: d_model 128, 4+4 layers, 6 heads, d_ff 1024
    "reference": Architecture(
        d_model=128, d_kv=64, num_heads=6, num_layers=4, num_decoder_layers=4, d_ff=1024
    ),
    # what we serve: sized so a full training fits ~15 min on 2 CPU cores
    "serving": Architecture(
        d_model=128, d_kv=32, num_heads=4, num_layers=2, num_decoder_layers=2, d_ff=512
    ),
    # unit tests
    "tiny": Architecture(
        d_model=32, d_kv=8, num_heads=2, num_layers=1, num_decoder_layers=1, d_ff=64, dropout=0.0
    ),
}


def build_model(
    layout: TokenLayout, arch: Architecture, seed: int = 0
) -> T5ForConditionalGeneration:
    """A freshly initialised T5 over ``layout`` (eager attention, tied embeddings)."""
    torch.manual_seed(seed)
    kwargs: dict[str, Any] = dict(
        vocab_size=layout.vocab_size,
        d_model=arch.d_model,
        d_kv=arch.d_kv,
        num_heads=arch.num_heads,
        num_layers=arch.num_layers,
        num_decoder_layers=arch.num_decoder_layers,
        d_ff=arch.d_ff,
        dropout_rate=arch.dropout,
        feed_forward_proj="relu",
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        decoder_start_token_id=DECODER_START_ID,
        tie_word_embeddings=True,
    )
    config = T5Config(**kwargs)
    config._attn_implementation = "eager"
    model = T5ForConditionalGeneration(config)
    model.generation_config.decoder_start_token_id = DECODER_START_ID
    model.generation_config.pad_token_id = PAD_ID
    model.generation_config.eos_token_id = EOS_ID
    return model


def output_scale(model: T5ForConditionalGeneration) -> float:
    """The factor T5 applies to decoder outputs before the (tied) LM head."""
    if bool(getattr(model.config, "scale_decoder_outputs", model.config.tie_word_embeddings)):
        return float(model.config.d_model) ** -0.5
    return 1.0


def embed_positions(model: T5ForConditionalGeneration, input_ids: torch.Tensor) -> torch.Tensor:
    """Encoder ``inputs_embeds`` (B, S, d): each position's non-pad token slots
    (B, S, L), embedded with the shared table and summed (see services.retrieval.encoding)."""
    vectors = model.get_input_embeddings()(input_ids)
    keep = (input_ids != PAD_ID).unsqueeze(-1).to(vectors.dtype)
    out: torch.Tensor = (vectors * keep).sum(dim=2)
    return out


def decoder_hidden(
    model: T5ForConditionalGeneration,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target_tokens: torch.Tensor,
) -> torch.Tensor:
    """Teacher-forced decoder states (B, L, d) for SID token targets (B, L), scaled."""
    encoded = model.encoder(
        inputs_embeds=embed_positions(model, input_ids), attention_mask=attention_mask
    ).last_hidden_state
    start = torch.full_like(target_tokens[:, :1], DECODER_START_ID)
    decoder_input = torch.cat([start, target_tokens[:, :-1]], dim=1)
    hidden = model.decoder(
        input_ids=decoder_input,
        encoder_hidden_states=encoded,
        encoder_attention_mask=attention_mask,
    ).last_hidden_state
    out: torch.Tensor = hidden * output_scale(model)
    return out


class TargetMasks:
    """Per item and level, which tokens the trie allows after the item's own prefix."""

    def __init__(self, trie: SidTrie, codes: np.ndarray) -> None:
        self.levels = [
            torch.from_numpy(trie.valid_next_mask(codes[:, :t]).copy())
            for t in range(codes.shape[1])
        ]

    def batch(self, level: int, rows: torch.Tensor) -> torch.Tensor:
        return self.levels[level][rows]


def sid_loss(
    model: T5ForConditionalGeneration,
    layout: TokenLayout,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    target_codes: torch.Tensor,
    target_rows: torch.Tensor,
    masks: TargetMasks | None,
) -> torch.Tensor:
    """Mean over levels of the cross-entropy of the target code.

    With ``masks`` (trie normalisation) each level's softmax runs over the valid
    continuations only; without, over the level's whole codebook.
    """
    offsets = torch.tensor(layout.level_offsets, dtype=torch.long)
    tokens = target_codes + offsets
    hidden = decoder_hidden(model, input_ids, attention_mask, tokens)
    weight = model.get_input_embeddings().weight
    total = hidden.new_zeros(())
    for level in range(layout.depth):
        sl = layout.level_slice(level)
        logits = F.linear(hidden[:, level], weight[sl])
        if masks is not None:
            logits = logits.masked_fill(~masks.batch(level, target_rows), float("-inf"))
        total = total + F.cross_entropy(logits.float(), target_codes[:, level])
    return total / layout.depth


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
