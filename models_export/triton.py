"""Triton model-repository ``config.pbtxt`` writer (our services run ORT themselves)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

Tensor = tuple[str, str, Sequence[int]]


def _tensors(kind: str, tensors: Sequence[Tensor]) -> str:
    body = ",\n".join(
        f'  {{ name: "{name}" data_type: {dtype} dims: [ {", ".join(map(str, dims))} ] }}'
        for name, dtype, dims in tensors
    )
    return f"{kind} [\n{body}\n]\n"


def write_triton_config(
    path: Path,
    *,
    name: str,
    inputs: Sequence[Tensor],
    outputs: Sequence[Tensor],
    max_batch_size: int = 0,
) -> None:
    """Write a minimal ONNX Runtime backend config; dims exclude the batch dim when batched."""
    text = (
        f'name: "{name}"\nbackend: "onnxruntime"\nmax_batch_size: {max_batch_size}\n'
        + _tensors("input", inputs)
        + _tensors("output", outputs)
    )
    path.write_text(text)
