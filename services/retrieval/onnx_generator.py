"""The generator on ONNX Runtime, torch-free: the two sessions (encoder + cached decoder
step, :class:`OnnxStepModel`, a ``beam_search.StepModel``) and :class:`OnnxSidGenerator`,
the batch API the retrieval service calls (text + history in, item rows out).

See ``models_export/generator/export_onnx.py`` for the graphs' inputs and outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from services.common.errors import ArtifactIntegrityError
from services.retrieval.beam_search import BeamSearch, SearchOptions
from services.retrieval.encoding import CONFIG_FILE, TOKENIZER_FILE, InputEncoder
from services.retrieval.trie import SidTrie

ENCODER_NAME = "generator_encoder"
DECODER_NAME = "generator_decoder"
ENCODER_MODEL = f"models/{ENCODER_NAME}/1/model.onnx"
DECODER_MODEL = f"models/{DECODER_NAME}/1/model.onnx"
GENERATOR_DIR = "generator"


def session_options(intra_op_threads: int, allow_spinning: bool = True) -> ort.SessionOptions:
    """One session per model, explicit thread count (several processes share few cores).

    With more than one intra-op thread on cores other processes also use, pass
    ``allow_spinning=False``: spinning worker threads made a decoder step 2x slower than a
    single thread on the loaded 2-core development machine (12 ms vs 5 ms)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return opts


@dataclass(frozen=True, slots=True)
class KvShape:
    num_layers: int
    num_heads: int
    d_kv: int


def _kv_shape(session: ort.InferenceSession) -> KvShape:
    """(layers, heads, d_kv) read from the decoder's per-layer ``past_key_i`` inputs."""
    past = [i for i in session.get_inputs() if i.name.startswith("past_key_")]
    values = [i for i in session.get_inputs() if i.name.startswith("past_value_")]
    dims = past[0].shape if past else []
    if (
        not past
        or len(values) != len(past)
        or len(dims) != 4
        or not all(isinstance(dims[i], int) for i in (1, 3))
    ):
        raise ArtifactIntegrityError(
            "decoder graph has no per-layer (rows, heads, t, d_kv) 'past_key_i'/'past_value_i' "
            "inputs (an artifact exported before the per-layer cache: rebuild it)"
        )
    if CROSS_BIAS not in {i.name for i in session.get_inputs()}:
        raise ArtifactIntegrityError(
            f"decoder graph has no '{CROSS_BIAS}' input (an artifact exported before the "
            "encoder computed the source mask bias: rebuild it)"
        )
    return KvShape(len(past), int(dims[1]), int(dims[3]))


#: the encoder's (Q, 1, 1, S) additive source mask, computed once per query for every step
CROSS_BIAS = "cross_bias"


def cross_names(num_layers: int) -> list[str]:
    """The encoder's outputs, which every decoder step takes back: each layer's cross K/V,
    then the source mask as an additive bias."""
    return [*kv_names("cross", num_layers), CROSS_BIAS]


def kv_names(kind: str, num_layers: int) -> list[str]:
    """``{kind}_key_0, {kind}_value_0, {kind}_key_1, ...``: the graphs' per-layer K/V names
    (``cross`` out of the encoder; ``past`` into, ``present`` out of the decoder)."""
    return [f"{kind}_{part}_{i}" for i in range(num_layers) for part in ("key", "value")]


def empty_kv_cache(num_layers: int, num_heads: int, d_kv: int, rows: int) -> list[np.ndarray]:
    """A per-layer (key, value, ...) self-attention cache with no steps for ``rows``."""
    shape = (rows, num_heads, 0, d_kv)
    return [np.zeros(shape, np.float32) for _ in range(2 * num_layers)]


class OnnxStepModel:
    """Encoder + decoder-step sessions on ONNX Runtime (CPU by default).

    K/V travel per layer, as separate tensors: a packed (layers, 2, ...) tensor made the
    graph split and re-stack it on every step (a fifth of the decoder's kernel time at the
    reference size, ``loadtest.benchmarks.decoder_profile``), and the beam reorder of the
    cache runs inside the graph (a Gather on ``beam_rows``), so numpy never copies K/V."""

    def __init__(
        self,
        encoder_path: Path,
        decoder_path: Path,
        intra_op_threads: int = 1,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        allow_spinning: bool = True,
        encoder_threads: int | None = None,
    ) -> None:
        """``encoder_threads`` (default ``intra_op_threads``): the encoder's intra-op pool,
        which spins. The encoder is one compute-bound run per query (a few large MatMuls
        over every source position), where a second thread pays for its wake-up; a decoder
        step is ~140 small kernels at batch 1, where it does not (see the benchmark)."""
        opts = session_options(intra_op_threads, allow_spinning)
        enc_threads = intra_op_threads if encoder_threads is None else encoder_threads
        enc_opts = opts if enc_threads == intra_op_threads else session_options(enc_threads)
        self.encoder = ort.InferenceSession(str(encoder_path), enc_opts, providers=list(providers))
        self.decoder = ort.InferenceSession(str(decoder_path), opts, providers=list(providers))
        shape = _kv_shape(self.decoder)
        self.num_layers = shape.num_layers
        self.num_heads = shape.num_heads
        self.d_kv = shape.d_kv
        self.decoder_vocab_size = int(self.decoder.get_outputs()[0].shape[-1])
        self._cross_names = cross_names(self.num_layers)
        self._past_names = kv_names("past", self.num_layers)
        self._outputs = ["logits", *kv_names("present", self.num_layers)]

    @classmethod
    def from_artifact(
        cls,
        resolve: Callable[[str], Path],
        intra_op_threads: int = 1,
        allow_spinning: bool = True,
        encoder_threads: int | None = None,
    ) -> OnnxStepModel:
        """Open both graphs through ``resolve`` (e.g. a manifest-checking ``ArtifactSet.path``)."""
        return cls(
            resolve(ENCODER_MODEL),
            resolve(DECODER_MODEL),
            intra_op_threads,
            allow_spinning=allow_spinning,
            encoder_threads=encoder_threads,
        )

    def encode(
        self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]
    ) -> list[npt.NDArray[np.float32]]:
        out: list[Any] = self.encoder.run(
            self._cross_names, {"input_ids": input_ids, "attention_mask": attention_mask}
        )
        return out

    def empty_cache(self, rows: int) -> list[npt.NDArray[np.float32]]:
        return empty_kv_cache(self.num_layers, self.num_heads, self.d_kv, rows)

    def step(
        self,
        tokens: npt.NDArray[np.int64],
        beam_rows: npt.NDArray[np.int64],
        cache: Sequence[npt.NDArray[np.float32]],
        cross: Sequence[npt.NDArray[np.float32]],
    ) -> tuple[npt.NDArray[np.float32], list[npt.NDArray[np.float32]]]:
        feeds: dict[str, Any] = {"tokens": tokens, "beam_rows": beam_rows}
        feeds.update(zip(self._cross_names, cross, strict=True))
        feeds.update(zip(self._past_names, cache, strict=True))
        out: list[Any] = self.decoder.run(self._outputs, feeds)
        return out[0], out[1:]


class DecodeRequest(Protocol):
    """What the retrieval engine hands over per request (duck-typed ``DecodeJob``); the
    optional ``exclude_rows`` (item rows never returned) and ``node_bonus`` (a decoding
    prior, see ``covisit.py``) are read when present."""

    query: str
    history_rows: npt.NDArray[np.int64]
    trie: SidTrie
    beam_width: int
    n_results: int


class OnnxSidGenerator:
    """Input encoding + constrained beam search (on :class:`OnnxStepModel`), batch in →
    items out: the engine's ``services.retrieval.engine.SidGenerator``.

    ``decode`` gives, for each job, up to ``n_results`` distinct (item row, summed
    log-prob) pairs, best first, in one beam search (per-job beam, trie and exclusions).
    """

    def __init__(self, encoder: InputEncoder, search: BeamSearch) -> None:
        self.encoder = encoder
        self.search = search

    @classmethod
    def from_artifact(
        cls,
        resolve: Callable[[str], Path],
        trie: SidTrie,
        item_codes: npt.ArrayLike,
        intra_op_threads: int = 1,
        allow_spinning: bool = True,
        encoder_threads: int | None = None,
    ) -> OnnxSidGenerator:
        """Load ``generator/encoding.json``, ``generator/tokenizer.json`` and both graphs
        through ``resolve`` (``ArtifactSet.path`` verifies each file's sha256); refuse
        graphs whose decoder vocabulary is not the encoding's."""
        encoder = InputEncoder.from_files(
            resolve(f"{GENERATOR_DIR}/{CONFIG_FILE}"),
            resolve(f"{GENERATOR_DIR}/{TOKENIZER_FILE}"),
            item_codes,
        )
        model = OnnxStepModel.from_artifact(
            resolve, intra_op_threads, allow_spinning, encoder_threads=encoder_threads
        )
        if model.decoder_vocab_size != encoder.layout.decoder_vocab_size:
            raise ArtifactIntegrityError(
                f"decoder scores {model.decoder_vocab_size} tokens, the encoding expects "
                f"{encoder.layout.decoder_vocab_size}: graphs and encoding do not match"
            )
        return cls(encoder, BeamSearch(model, encoder.layout, trie, item_codes))

    def decode(self, jobs: Sequence[DecodeRequest]) -> list[list[tuple[int, float]]]:
        if not jobs:
            return []
        batch = self.encoder.encode(
            [j.query or None for j in jobs], [np.asarray(j.history_rows) for j in jobs]
        )
        options = [
            SearchOptions(
                beam_width=j.beam_width,
                k=j.n_results,
                trie=j.trie,
                exclude=getattr(j, "exclude_rows", None),
                node_bonus=getattr(j, "node_bonus", None),
            )
            for j in jobs
        ]
        return [
            list(zip(r.items.tolist(), r.scores.tolist(), strict=True))
            for r in self.search.search(batch, options)
        ]
