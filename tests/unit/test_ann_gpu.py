"""The ANN index's GPU placement: on the GPU only when asked, supported and possible."""

from __future__ import annotations

import logging
from typing import Any

import faiss
import numpy as np
import pytest

from services.retrieval import ann
from services.retrieval.ann import AnnIndex


def vectors(n: int = 50, dim: int = 8) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


class FakeGpuIndex:
    """Stands in for a GPU index: answers like the CPU index and counts its searches."""

    def __init__(self, cpu: Any) -> None:
        self.cpu = cpu
        self.searches = 0

    def search(self, x: np.ndarray, k: int, params: Any = None) -> Any:
        assert params is None  # GPU searches never carry an ID selector
        self.searches += 1
        return self.cpu.search(x, k)


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, Any]]:
    moved: list[tuple[int, Any]] = []

    def to_gpu(resources: object, device: int, index: Any) -> FakeGpuIndex:
        moved.append((device, index))
        return FakeGpuIndex(index)

    monkeypatch.setattr(ann.faiss, "StandardGpuResources", object, raising=False)
    monkeypatch.setattr(ann.faiss, "get_num_gpus", lambda: 1)
    monkeypatch.setattr(ann.faiss, "index_cpu_to_gpu", to_gpu, raising=False)
    return moved


def test_stays_on_the_cpu_unless_asked(fake_gpu: list) -> None:
    index = AnnIndex(vectors())
    assert index.device == "cpu" and index.gpu_index is None and not fake_gpu


def test_the_flat_index_moves_to_the_gpu_and_filtered_searches_stay_on_the_cpu(
    fake_gpu: list,
) -> None:
    x = vectors()
    index = AnnIndex(x, use_gpu=True)
    assert index.device == "gpu:0" and fake_gpu[0][0] == 0
    gpu = index.gpu_index
    assert isinstance(gpu, FakeGpuIndex)
    plain = index.search(x[3], 5, exclude={3})
    assert gpu.searches == 1 and len(plain) == 5 and 3 not in [r for r, _ in plain]
    allowed = np.arange(10, 20)
    filtered = index.search(x[3], 5, allowed=allowed)
    assert gpu.searches == 1  # the ID selector ran on the CPU copy
    assert {r for r, _ in filtered} <= set(allowed.tolist())


@pytest.mark.parametrize(
    ("gpus", "threshold", "device", "reason"),
    [
        (0, 200_000, 0, "faiss reports 0 GPU(s), device 0"),
        (1, 200_000, 1, "faiss reports 1 GPU(s), device 1"),
        (1, 10, 0, "HNSW"),
    ],
)
def test_why_it_stays_on_the_cpu_is_logged(
    fake_gpu: list,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    gpus: int,
    threshold: int,
    device: int,
    reason: str,
) -> None:
    monkeypatch.setattr(ann.faiss, "get_num_gpus", lambda: gpus)
    with caplog.at_level(logging.WARNING, logger="services.retrieval.ann"):
        index = AnnIndex(vectors(), threshold, use_gpu=True, gpu_device=device)
    assert index.device == "cpu" and not fake_gpu
    assert reason in caplog.records[0].reason  # type: ignore[attr-defined]


@pytest.mark.skipif(hasattr(faiss, "StandardGpuResources"), reason="faiss with GPU support")
def test_faiss_cpu_has_no_gpu_path(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="services.retrieval.ann"):
        index = AnnIndex(vectors(), use_gpu=True)
    assert index.device == "cpu"
    assert "no GPU support" in caplog.records[0].reason  # type: ignore[attr-defined]
