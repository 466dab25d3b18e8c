"""The I/O-binding decode path (``GENSEARCH_RETRIEVAL_IO_BINDING``) on the quick artifact, on
the CPU: ONNX Runtime I/O binding with outputs bound to the session's device (here "cpu")
and the device search on numpy return what the default path returns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from services.common.artifacts import ArtifactRepository
from services.common.onnx_sessions import ExecutionSettings
from services.retrieval.beam_search import SearchOptions
from services.retrieval.encoding import EncodingConfig
from services.retrieval.engine import DecodeJob
from services.retrieval.loader import _codes_and_trie
from services.retrieval.onnx_generator import IoBindingStepModel, OnnxSidGenerator
from services.retrieval.trie import SidTrie

pytestmark = pytest.mark.integration

QUERIES = ["digital caliper", "nitrile gloves", "", "glass beaker 250 ml", "safety glasses"]


@pytest.fixture(scope="module")
def generators(artifact_root: Path) -> tuple[OnnxSidGenerator, OnnxSidGenerator, SidTrie]:
    arts = ArtifactRepository(artifact_root).open(None)
    encoding = EncodingConfig.from_json(arts.path("generator/encoding.json").read_text())
    codes, trie = _codes_and_trie(arts, tuple(encoding.codebook_sizes))
    cpu = ExecutionSettings()
    plain = OnnxSidGenerator.from_artifact(arts.path, trie, codes, execution=cpu)
    bound = OnnxSidGenerator.from_artifact(arts.path, trie, codes, execution=cpu, io_binding=True)
    return plain, bound, trie


def _jobs(trie: SidTrie, beam: int, exclude: bool = False) -> list[DecodeJob]:
    return [
        DecodeJob(
            q,
            np.arange(7 * i, 7 * i + 4, dtype=np.int64),
            trie,
            beam,
            10,
            np.arange(7 * i, 7 * i + 2, dtype=np.int64) if exclude else np.zeros(0, np.int64),
        )
        for i, q in enumerate(QUERIES)
    ]


def test_the_io_binding_model_binds_to_the_sessions_device(generators: tuple) -> None:
    _, bound, _ = generators
    assert bound.device_search is not None
    model = bound.search.model
    assert isinstance(model, IoBindingStepModel)
    assert (model.provider, model.device_type) == ("CPUExecutionProvider", "cpu")
    assert bound.device_search.xp is np  # no CUDA device: numpy arrays


@pytest.mark.parametrize("beam", [20, 64])
def test_io_binding_decodes_the_same_top_10(generators: tuple, beam: int) -> None:
    plain, bound, trie = generators
    jobs = _jobs(trie, beam)
    want, got = plain.decode(jobs), bound.decode(jobs)
    for w, g in zip(want, got, strict=True):
        assert [r for r, _ in g] == [r for r, _ in w]
        assert np.allclose([s for _, s in g], [s for _, s in w], atol=1e-4)
        assert len(w) == 10
    one = bound.decode(jobs[:1])[0]  # batch 1 too
    assert [r for r, _ in one] == [r for r, _ in plain.decode(jobs[:1])[0]]


def test_batches_with_exclusions_take_the_host_search_over_bound_kv(generators: tuple) -> None:
    plain, bound, trie = generators
    jobs = _jobs(trie, 20, exclude=True)
    options = [SearchOptions(j.beam_width, j.n_results, j.trie, j.exclude_rows) for j in jobs]
    assert not bound.device_search.supports(options)
    want, got = plain.decode(jobs), bound.decode(jobs)
    assert [[r for r, _ in g] for g in got] == [[r for r, _ in w] for w in want]
    for job, g in zip(jobs, got, strict=True):
        assert not set(job.exclude_rows.tolist()) & {r for r, _ in g}
