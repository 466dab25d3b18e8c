"""The one home for opening ONNX Runtime sessions: thread settings and execution providers.

Every service model (generator encoder/decoder, text encoder, ranker, policy, intent head)
is opened by :func:`open_session`. Which execution providers it asks for comes from
:class:`ExecutionSettings` (env prefix ``GENSEARCH_ONNX_``), in order of preference, e.g.
``GENSEARCH_ONNX_PROVIDERS=tensorrt,cuda,cpu``; the default is the CPU alone, so nothing
changes on a machine without a GPU. A provider that is asked for but not installed (the CPU
``onnxruntime`` wheel has neither CUDA nor TensorRT) stops the process at start with a
:class:`~services.common.errors.ConfigurationError` naming it and the installed ones, unless
``GENSEARCH_ONNX_ALLOW_FALLBACK=true``, which drops it with a warning. The provider a
session actually runs on (its first one) is logged, exported as
``gensearch_onnx_session_info{model, provider}`` and kept for :func:`providers_in_use`,
which the services report in ``GetInfo`` (``ArtifactInfo.execution_providers``).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import onnxruntime as ort
from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from services.common.errors import ConfigurationError
from services.common.metrics import ONNX_SESSION_INFO

log = logging.getLogger(__name__)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
#: the short names the setting accepts (full ONNX Runtime names are accepted as they are)
SHORT_NAMES = {"tensorrt": TENSORRT, "trt": TENSORRT, "cuda": CUDA, "cpu": CPU}
#: providers whose sessions keep tensors in CUDA device memory (for I/O binding)
CUDA_PROVIDERS = frozenset({TENSORRT, CUDA})

_lock = threading.Lock()
_in_use: dict[str, str] = {}


def provider_name(name: str) -> str:
    """The ONNX Runtime name of ``name`` (``tensorrt``/``trt``, ``cuda``, ``cpu``, or a full
    ``...ExecutionProvider`` name); raises ``ValueError`` for anything else."""
    key = name.strip()
    if key.lower() in SHORT_NAMES:
        return SHORT_NAMES[key.lower()]
    if key.endswith("ExecutionProvider"):
        return key
    raise ValueError(
        f"unknown execution provider {name!r}: use tensorrt, cuda, cpu or a full ONNX Runtime "
        "provider name (e.g. CUDAExecutionProvider)"
    )


class ExecutionSettings(BaseSettings):
    """Where ONNX models run (env prefix ``GENSEARCH_ONNX_``); one setting for every model
    of a process."""

    model_config = SettingsConfigDict(env_prefix="GENSEARCH_ONNX_", extra="ignore", frozen=True)

    providers: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [CPU],
        description="execution providers in order of preference: tensorrt, cuda, cpu "
        "(comma-separated or a JSON list; full ONNX Runtime names accepted)",
    )
    allow_fallback: bool = Field(
        default=False,
        description="drop requested providers that are not installed (with a warning)",
    )
    trt_fp16: bool = Field(default=True, description="TensorRT: allow fp16 kernels")
    trt_engine_cache_dir: str = Field(default=".cache/trt", description="TensorRT: engine cache")
    trt_workspace_bytes: int = Field(default=4 << 30, ge=1 << 20, description="TensorRT: workspace")
    cuda_device_id: int = Field(default=0, ge=0, description="CUDA (and TensorRT) device ordinal")
    cuda_mem_limit_bytes: int = Field(
        default=0, ge=0, description="CUDA: arena memory limit in bytes (0 = no limit)"
    )

    @field_validator("providers", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                return json.loads(text)
            return [p for p in (s.strip() for s in text.split(",")) if p]
        return value

    @field_validator("providers")
    @classmethod
    def _normalise(cls, value: list[str]) -> list[str]:
        names: list[str] = []
        for name in value:
            full = provider_name(name)
            if full not in names:
                names.append(full)
        if not names:
            raise ValueError("at least one execution provider is required")
        return names


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


def resolve_providers(
    requested: Sequence[str], available: Sequence[str], allow_fallback: bool
) -> list[str]:
    """``requested`` (full names) that ``available`` has, in order. A missing one raises
    :class:`ConfigurationError` unless ``allow_fallback`` (then it is dropped with a
    warning, and the CPU is used when nothing is left)."""
    missing = [p for p in requested if p not in available]
    if missing and not allow_fallback:
        raise ConfigurationError(
            f"ONNX Runtime execution provider(s) {', '.join(missing)} requested "
            f"(GENSEARCH_ONNX_PROVIDERS={','.join(requested)}) but not installed; this "
            f"onnxruntime ({ort.__version__}) has {', '.join(available) or 'none'}. Install the "
            "GPU extra (docs/gpu.md) or set GENSEARCH_ONNX_ALLOW_FALLBACK=true to use the "
            "next provider in the list."
        )
    kept = [p for p in requested if p in available]
    if missing:
        log.warning(
            "execution provider not installed, falling back",
            extra={"missing": missing, "installed": list(available), "using": kept or [CPU]},
        )
    return kept or [CPU]


def provider_options(provider: str, settings: ExecutionSettings) -> dict[str, str]:
    """ONNX Runtime options of ``provider`` from ``settings`` (empty for the CPU)."""
    if provider == TENSORRT:
        return {
            "device_id": str(settings.cuda_device_id),
            "trt_fp16_enable": str(settings.trt_fp16),
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": settings.trt_engine_cache_dir,
            "trt_max_workspace_size": str(settings.trt_workspace_bytes),
        }
    if provider == CUDA:
        options = {"device_id": str(settings.cuda_device_id)}
        if settings.cuda_mem_limit_bytes:
            options["gpu_mem_limit"] = str(settings.cuda_mem_limit_bytes)
        return options
    return {}


def binding_device(provider: str, settings: ExecutionSettings) -> tuple[str, int]:
    """(ORT device type, device id) where a session on ``provider`` keeps its tensors: what
    I/O binding binds outputs to (``"cuda"`` for CUDA/TensorRT, else ``"cpu"``)."""
    if provider in CUDA_PROVIDERS:
        return "cuda", settings.cuda_device_id
    return "cpu", 0


def open_session(
    path: Path | str,
    *,
    intra_op_threads: int,
    allow_spinning: bool = True,
    settings: ExecutionSettings | None = None,
    model_name: str,
) -> ort.InferenceSession:
    """Open ``path`` on the providers ``settings`` asks for (default: from the environment),
    record and report the provider it runs on. Raises :class:`ConfigurationError` when a
    requested provider is missing, or when ONNX Runtime itself fell back to another one
    (e.g. the CUDA libraries failed to load), unless ``settings.allow_fallback``."""
    settings = settings if settings is not None else ExecutionSettings()
    resolved = resolve_providers(
        settings.providers, ort.get_available_providers(), settings.allow_fallback
    )
    if TENSORRT in resolved:
        Path(settings.trt_engine_cache_dir).mkdir(parents=True, exist_ok=True)
    providers: list[tuple[str, dict[str, str]]] = [
        (p, provider_options(p, settings)) for p in resolved
    ]
    session = ort.InferenceSession(
        str(path), session_options(intra_op_threads, allow_spinning), providers=providers
    )
    in_use = session.get_providers()[0]
    if in_use != resolved[0]:
        if not settings.allow_fallback:
            raise ConfigurationError(
                f"{model_name}: ONNX Runtime could not start {resolved[0]} and fell back to "
                f"{in_use} (see its log above); set GENSEARCH_ONNX_ALLOW_FALLBACK=true to "
                "accept that"
            )
        log.warning(
            "execution provider failed to start, fell back",
            extra={"model": model_name, "requested": resolved[0], "provider": in_use},
        )
    _record(model_name, in_use)
    log.info(
        "onnx session opened",
        extra={
            "model": model_name,
            "provider": in_use,
            "providers": session.get_providers(),
            "intra_op_threads": intra_op_threads,
        },
    )
    return session


def _record(model_name: str, provider: str) -> None:
    with _lock:
        old = _in_use.get(model_name)
        if old is not None and old != provider:
            ONNX_SESSION_INFO.labels(model=model_name, provider=old).set(0)
        _in_use[model_name] = provider
    ONNX_SESSION_INFO.labels(model=model_name, provider=provider).set(1)


def providers_in_use() -> dict[str, str]:
    """Model name → the execution provider its session runs on, for every session opened
    in this process (what health/``GetInfo`` reports)."""
    with _lock:
        return dict(_in_use)
