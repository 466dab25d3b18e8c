"""The generator on ONNX Runtime, torch-free: the two sessions (encoder + cached decoder
step, :class:`OnnxStepModel`, a ``beam_search.StepModel``) and :class:`OnnxSidGenerator`,
the batch API the retrieval service calls (text + history in, item rows out).

:class:`IoBindingStepModel` runs the same graphs through ONNX Runtime's I/O binding: the
encoder's cross K/V and the decoder's self-attention cache stay as ``OrtValue`` s on the
session's device (CUDA under the CUDA/TensorRT providers, else the CPU) between steps, and
the logits can be read as device arrays by :mod:`services.retrieval.device_search`, which
keeps the whole constrained search there (``GENSEARCH_RETRIEVAL_IO_BINDING``).

See ``models_export/generator/export_onnx.py`` for the graphs' inputs and outputs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from services.common.errors import ArtifactIntegrityError
from services.common.onnx_sessions import (
    ExecutionSettings,
    binding_device,
    open_session,
)
from services.common.onnx_sessions import session_options as session_options
from services.retrieval.beam_search import BeamSearch, SearchOptions, SearchResult
from services.retrieval.device_masks import DeviceTrie, array_module, synchronize
from services.retrieval.device_search import DeviceBeamSearch
from services.retrieval.encoding import CONFIG_FILE, TOKENIZER_FILE, InputEncoder, TokenLayout
from services.retrieval.trie import SidTrie

log = logging.getLogger(__name__)

ENCODER_NAME = "generator_encoder"
DECODER_NAME = "generator_decoder"
ENCODER_MODEL = f"models/{ENCODER_NAME}/1/model.onnx"
DECODER_MODEL = f"models/{DECODER_NAME}/1/model.onnx"
GENERATOR_DIR = "generator"


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
    """Encoder + decoder-step sessions on ONNX Runtime (where ``GENSEARCH_ONNX_PROVIDERS``
    says; the CPU by default).

    K/V travel per layer, as separate tensors: a packed (layers, 2, ...) tensor made the
    graph split and re-stack it on every step (a fifth of the decoder's kernel time at the
    reference size, ``loadtest.benchmarks.decoder_profile``), and the beam reorder of the
    cache runs inside the graph (a Gather on ``beam_rows``), so numpy never copies K/V."""

    def __init__(
        self,
        encoder_path: Path,
        decoder_path: Path,
        intra_op_threads: int = 1,
        execution: ExecutionSettings | None = None,
        allow_spinning: bool = True,
        encoder_threads: int | None = None,
    ) -> None:
        """``encoder_threads`` (default ``intra_op_threads``): the encoder's intra-op pool,
        which spins. The encoder is one compute-bound run per query (a few large MatMuls
        over every source position), where a second thread pays for its wake-up; a decoder
        step is ~140 small kernels at batch 1, where it does not (see the benchmark).
        ``execution``: the providers (default: ``GENSEARCH_ONNX_*`` from the environment)."""
        self.execution = execution if execution is not None else ExecutionSettings()
        enc_threads = intra_op_threads if encoder_threads is None else encoder_threads
        self.encoder = open_session(
            encoder_path,
            intra_op_threads=enc_threads,
            allow_spinning=allow_spinning if enc_threads == intra_op_threads else True,
            settings=self.execution,
            model_name=ENCODER_NAME,
        )
        self.decoder = open_session(
            decoder_path,
            intra_op_threads=intra_op_threads,
            allow_spinning=allow_spinning,
            settings=self.execution,
            model_name=DECODER_NAME,
        )
        #: the execution provider the decoder runs on (its first)
        self.provider = self.decoder.get_providers()[0]
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
        execution: ExecutionSettings | None = None,
    ) -> OnnxStepModel:
        """Open both graphs through ``resolve`` (e.g. a manifest-checking ``ArtifactSet.path``)."""
        return cls(
            resolve(ENCODER_MODEL),
            resolve(DECODER_MODEL),
            intra_op_threads,
            execution,
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


def _ort_dtype(array: Any) -> type[np.generic]:
    return np.dtype(array.dtype).type


class IoBindingStepModel(OnnxStepModel):
    """:class:`OnnxStepModel` run through I/O binding: every output is bound to the
    session's device (``binding_device``: CUDA under the CUDA/TensorRT providers, else the
    CPU), so the encoder's cross K/V and the decoder's self-attention cache stay there as
    ``OrtValue`` s between steps and only what the search reads comes back.

    Two faces: the ``beam_search.StepModel`` calls (``encode``/``empty_cache``/``step``,
    logits copied to host numpy for the host search) and the device calls
    (``*_device``: inputs and logits are ``xp`` arrays, read in place on the device, for
    :class:`services.retrieval.device_search.DeviceBeamSearch`)."""

    def __init__(
        self,
        encoder_path: Path,
        decoder_path: Path,
        intra_op_threads: int = 1,
        execution: ExecutionSettings | None = None,
        allow_spinning: bool = True,
        encoder_threads: int | None = None,
    ) -> None:
        super().__init__(
            encoder_path,
            decoder_path,
            intra_op_threads,
            execution,
            allow_spinning=allow_spinning,
            encoder_threads=encoder_threads,
        )
        self.device_type, self.device_id = binding_device(self.provider, self.execution)
        log.info(
            "generator I/O binding",
            extra={"provider": self.provider, "device": f"{self.device_type}:{self.device_id}"},
        )

    # ---------------------------------------------------------------- binding helpers

    def _bind(self, binding: ort.IOBinding, name: str, array: Any) -> None:
        """Bind a host numpy array (copied by ORT where needed) or a device array (CuPy,
        bound in place by its pointer; the caller keeps it alive until the run returns)."""
        if isinstance(array, np.ndarray):
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        elif isinstance(array, ort.OrtValue):
            binding.bind_ortvalue_input(name, array)
        else:
            binding.bind_input(
                name,
                self.device_type,
                self.device_id,
                _ort_dtype(array),
                list(array.shape),
                int(array.data.ptr),
            )

    def _values(self, arrays: Sequence[Any]) -> list[ort.OrtValue]:
        return [
            ort.OrtValue.ortvalue_from_numpy(
                np.ascontiguousarray(a), self.device_type, self.device_id
            )
            for a in arrays
        ]

    def to_xp(self, value: ort.OrtValue, xp: ModuleType) -> Any:
        """``value`` as an ``xp`` array: a host copy for numpy, an in-place view (which keeps
        ``value`` alive) for CuPy on the session's CUDA device."""
        if xp is np:
            return value.numpy()
        if self.device_type != "cuda":
            return xp.asarray(value.numpy())
        shape = tuple(int(d) for d in value.shape())
        nbytes = int(np.prod(shape, dtype=np.int64)) * 4
        memory = xp.cuda.UnownedMemory(int(value.data_ptr()), nbytes, value)
        return xp.ndarray(shape, dtype=np.float32, memptr=xp.cuda.MemoryPointer(memory, 0))

    # ---------------------------------------------------------------- device face

    def encode_device(self, input_ids: Any, attention_mask: Any) -> list[ort.OrtValue]:
        """The cross-attention state, left on the device."""
        binding = self.encoder.io_binding()
        self._bind(binding, "input_ids", input_ids)
        self._bind(binding, "attention_mask", attention_mask)
        for name in self._cross_names:
            binding.bind_output(name, self.device_type, self.device_id)
        self.encoder.run_with_iobinding(binding)
        out: list[ort.OrtValue] = binding.get_outputs()
        return out

    def empty_cache_device(self, rows: int) -> list[ort.OrtValue]:
        return self._values(empty_kv_cache(self.num_layers, self.num_heads, self.d_kv, rows))

    def step_value(
        self,
        tokens: Any,
        beam_rows: Any,
        cache: Sequence[ort.OrtValue],
        cross: Sequence[ort.OrtValue],
    ) -> tuple[ort.OrtValue, list[ort.OrtValue]]:
        """One decoder step; logits and the extended cache stay on the device."""
        binding = self.decoder.io_binding()
        self._bind(binding, "tokens", tokens)
        self._bind(binding, "beam_rows", beam_rows)
        for name, value in zip(self._cross_names, cross, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name, value in zip(self._past_names, cache, strict=True):
            binding.bind_ortvalue_input(name, value)
        for name in self._outputs:
            binding.bind_output(name, self.device_type, self.device_id)
        self.decoder.run_with_iobinding(binding)
        out: list[ort.OrtValue] = binding.get_outputs()
        return out[0], out[1:]

    def step_device(
        self,
        tokens: Any,
        beam_rows: Any,
        cache: Sequence[ort.OrtValue],
        cross: Sequence[ort.OrtValue],
        xp: ModuleType,
    ) -> tuple[Any, list[ort.OrtValue]]:
        """One decoder step with ``xp`` inputs; logits (rows, V_dec) as an ``xp`` array.
        Device inputs are bound by pointer: CuPy's queued work that writes them is waited
        for first (ONNX Runtime reads them on its own CUDA stream)."""
        tokens = xp.ascontiguousarray(tokens, dtype=np.int64)
        beam_rows = xp.ascontiguousarray(beam_rows, dtype=np.int64)
        synchronize(xp)
        logits, cache_out = self.step_value(tokens, beam_rows, cache, cross)
        out = self.to_xp(logits, xp)
        return out.reshape(-1, out.shape[-1]), cache_out

    # ---------------------------------------------------------------- StepModel face

    def encode(
        self, input_ids: npt.NDArray[np.int64], attention_mask: npt.NDArray[np.int64]
    ) -> list[ort.OrtValue]:
        return self.encode_device(input_ids, attention_mask)

    def empty_cache(self, rows: int) -> list[ort.OrtValue]:
        return self.empty_cache_device(rows)

    def step(
        self,
        tokens: npt.NDArray[np.int64],
        beam_rows: npt.NDArray[np.int64],
        cache: Sequence[ort.OrtValue],
        cross: Sequence[ort.OrtValue],
    ) -> tuple[npt.NDArray[np.float32], list[ort.OrtValue]]:
        logits, cache_out = self.step_value(tokens, beam_rows, cache, cross)
        host: npt.NDArray[np.float32] = logits.numpy()
        return host, cache_out


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
    With a ``device_search`` (I/O binding), the batches it supports decode on the device
    and the others on the host search (whose K/V still stay on the device).
    """

    def __init__(
        self,
        encoder: InputEncoder,
        search: BeamSearch,
        device_search: DeviceBeamSearch | None = None,
    ) -> None:
        self.encoder = encoder
        self.search = search
        self.device_search = device_search

    @classmethod
    def from_artifact(
        cls,
        resolve: Callable[[str], Path],
        trie: SidTrie,
        item_codes: npt.ArrayLike,
        intra_op_threads: int = 1,
        allow_spinning: bool = True,
        encoder_threads: int | None = None,
        *,
        execution: ExecutionSettings | None = None,
        io_binding: bool = False,
    ) -> OnnxSidGenerator:
        """Load ``generator/encoding.json``, ``generator/tokenizer.json`` and both graphs
        through ``resolve`` (``ArtifactSet.path`` verifies each file's sha256); refuse
        graphs whose decoder vocabulary is not the encoding's. ``io_binding``: run the
        graphs through I/O binding and decode on the device (:mod:`device_search`; CuPy
        arrays when a CUDA device is usable, else numpy)."""
        encoder = InputEncoder.from_files(
            resolve(f"{GENERATOR_DIR}/{CONFIG_FILE}"),
            resolve(f"{GENERATOR_DIR}/{TOKENIZER_FILE}"),
            item_codes,
        )
        model_cls = IoBindingStepModel if io_binding else OnnxStepModel
        model = model_cls(
            resolve(ENCODER_MODEL),
            resolve(DECODER_MODEL),
            intra_op_threads,
            execution,
            allow_spinning=allow_spinning,
            encoder_threads=encoder_threads,
        )
        if model.decoder_vocab_size != encoder.layout.decoder_vocab_size:
            raise ArtifactIntegrityError(
                f"decoder scores {model.decoder_vocab_size} tokens, the encoding expects "
                f"{encoder.layout.decoder_vocab_size}: graphs and encoding do not match"
            )
        search = BeamSearch(model, encoder.layout, trie, item_codes)
        device_search = None
        if isinstance(model, IoBindingStepModel):
            device_search = device_search_for(model, encoder.layout, trie)
        return cls(encoder, search, device_search)

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
        results: list[SearchResult]
        if self.device_search is not None and self.device_search.supports(options):
            results = self.device_search.search(batch, options)
        else:
            results = self.search.search(batch, options)
        return [list(zip(r.items.tolist(), r.scores.tolist(), strict=True)) for r in results]


def device_search_for(
    model: IoBindingStepModel, layout: TokenLayout, trie: SidTrie
) -> DeviceBeamSearch:
    """A :class:`DeviceBeamSearch` over ``trie`` whose arrays live where ``model``'s outputs
    do: CuPy on the session's CUDA device when the decoder runs there and CuPy sees a
    device, else numpy (logged)."""
    xp = array_module(prefer_device=model.device_type == "cuda")
    if xp is not np:
        xp.cuda.Device(model.device_id).use()
    elif model.device_type == "cuda":
        log.warning(
            "decoder on CUDA but CuPy has no device: the device search runs on numpy "
            "(logits copied to the host each step)"
        )
    device_trie = DeviceTrie(trie, xp)
    log.info(
        "device search",
        extra={
            "arrays": xp.__name__,
            "trie_bytes": device_trie.nbytes(),
            "provider": model.provider,
        },
    )
    return DeviceBeamSearch(model, layout, device_trie)
