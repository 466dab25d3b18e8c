"""Pipeline step ``tensorrt``: TensorRT engines of the served ONNX graphs (GPU machines only).

For the generator's encoder and decoder step and the RAG cross-encoder (each when the
artifact has it), build one engine with one dynamic-shape optimisation profile covering
the shapes the services run: every symbolic dimension of the graph's inputs is mapped to a
(min, opt, max) range by :func:`dim_range`, from the retrieval settings (max batch, default
and max beam width; ``GENSEARCH_RETRIEVAL_*`` overrides apply), the artifact's encoding
(source positions, SID depth) and the reranker's batch and token limits. Engines go to
``trt/<model>.engine``; ``config["tensorrt"]`` records the TensorRT version, the GPU they
were built on (an engine only runs on that GPU model with that TensorRT version), the
builder, fp16 and every profile.

The TensorRT Python API (the ``tensorrt`` package) is used when importable, else
``trtexec`` from the PATH; with neither the step returns a "skipped" summary and writes
nothing, so CPU machines build the same artifact minus ``trt/``. The serving processes do
not load these files: ONNX Runtime's TensorRT provider builds and caches its own engines
(``GENSEARCH_ONNX_TRT_ENGINE_CACHE_DIR``); these are for Triton's TensorRT backend and for
checking that every graph converts, with its profile, on the target GPU (docs/gpu.md).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxruntime as ort

from services.common.onnx_sessions import ExecutionSettings
from services.retrieval.config import RetrievalSettings
from services.retrieval.encoding import EncodingConfig
from services.retrieval.onnx_generator import (
    DECODER_MODEL,
    DECODER_NAME,
    ENCODER_MODEL,
    ENCODER_NAME,
    GENERATOR_DIR,
)

if TYPE_CHECKING:
    from models_export.pipeline import BuildContext

TRT_DIR = "trt"
RERANKER_NAME = "rag_reranker"
RERANKER_MODEL = f"models/{RERANKER_NAME}/1/model.onnx"
RERANKER_CONFIG = "rag/reranker.json"
#: the cross-encoder's pairs per ONNX run and its default token limit
#: (``services.rag_rerank.model.CrossEncoder``'s ``batch_size`` and ``serve_max_length``)
RERANKER_BATCH = 32
RERANKER_MAX_TOKENS = 256
#: the graphs that get engines, in build order
MODELS: dict[str, str] = {
    ENCODER_NAME: ENCODER_MODEL,
    DECODER_NAME: DECODER_MODEL,
    RERANKER_NAME: RERANKER_MODEL,
}
SKIPPED = "skipped: TensorRT is not installed (no tensorrt module, no trtexec on PATH)"

Range = tuple[int, int, int]
Shape = list[int]


@dataclass(frozen=True, slots=True)
class ServedShapes:
    """The largest (and typical) sizes the services run the graphs at."""

    max_batch: int  # queries per decoder batch (the retrieval batcher's max)
    opt_batch: int
    max_beam: int  # beam width
    opt_beam: int
    max_source: int  # encoder positions
    depth: int  # SID levels: the decoder's cache holds at most depth - 1 steps
    max_pairs: int = RERANKER_BATCH  # cross-encoder (query, document) pairs per run
    max_tokens: int = RERANKER_MAX_TOKENS  # cross-encoder tokens per pair


def served_shapes(
    settings: RetrievalSettings, encoding: EncodingConfig | None, max_tokens: int
) -> ServedShapes:
    """The shapes of the retrieval ``settings`` (max batch, default/max beam), the
    artifact's ``encoding`` (positions, depth; the defaults without a generator) and the
    reranker's token limit."""
    enc = encoding or EncodingConfig(codebook_sizes=(256, 256, 256), n_words=0)
    return ServedShapes(
        max_batch=settings.max_batch_size,
        opt_batch=max(1, min(8, settings.max_batch_size)),
        max_beam=settings.max_beam_width,
        opt_beam=min(settings.default_beam_width, settings.max_beam_width),
        max_source=enc.max_length(),
        depth=len(enc.codebook_sizes),
        max_tokens=max_tokens,
    )


def dim_range(dim: str, s: ServedShapes) -> Range:
    """(min, opt, max) of one symbolic dimension (the names the exports give them)."""
    hypotheses = (1, s.opt_batch * s.opt_beam, s.max_batch * s.max_beam)
    ranges: dict[str, Range] = {
        "queries": (1, s.opt_batch, s.max_batch),
        "beams": (1, s.opt_beam, s.max_beam),
        "hypotheses": hypotheses,
        "past_rows": hypotheses,
        "source": (1, max(1, s.max_source // 2), s.max_source),
        "steps": (0, max(0, (s.depth - 1) // 2), max(0, s.depth - 1)),
        "batch": (1, max(1, s.max_pairs // 2), s.max_pairs),
        "seq": (1, max(1, s.max_tokens // 2), s.max_tokens),
        "sequence": (1, max(1, s.max_tokens // 2), s.max_tokens),
    }
    if dim not in ranges:
        raise ValueError(f"no profile rule for the dimension {dim!r}")
    lo, opt, hi = ranges[dim]
    return lo, min(max(opt, lo), hi), hi


def input_profiles(
    inputs: list[tuple[str, list[Any]]], shapes: ServedShapes
) -> dict[str, tuple[Shape, Shape, Shape]]:
    """Input name → (min, opt, max) shape; fixed dimensions stay as they are. Raises
    ``ValueError`` for a symbolic dimension without a rule."""
    out: dict[str, tuple[Shape, Shape, Shape]] = {}
    for name, dims in inputs:
        lo: Shape = []
        opt: Shape = []
        hi: Shape = []
        for d in dims:
            if isinstance(d, int) and d >= 0:
                r = (d, d, d)
            elif isinstance(d, str):
                r = dim_range(d, shapes)
            else:
                raise ValueError(f"input {name!r} has an unnamed dynamic dimension")
            lo.append(r[0])
            opt.append(r[1])
            hi.append(r[2])
        out[name] = (lo, opt, hi)
    return out


def graph_inputs(path: Path) -> list[tuple[str, list[Any]]]:
    """(name, dims) of a graph's inputs (ints, or the names of symbolic dimensions)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [(i.name, list(i.shape)) for i in session.get_inputs()]


def tensorrt_module_present() -> bool:
    """Whether the TensorRT Python package is importable here."""
    return importlib.util.find_spec("tensorrt") is not None


def find_builder() -> str | None:
    """``"python"`` (the tensorrt package), ``"trtexec"`` (on the PATH) or None."""
    if tensorrt_module_present():
        return "python"
    if shutil.which("trtexec"):
        return "trtexec"
    return None


def gpu_name() -> str:
    """The GPU model the engines are built for (nvidia-smi, else CuPy), or "unknown"."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader", "--id=0"],
                capture_output=True,
                text=True,
                timeout=30,
                check=True,
            )
            if out.stdout.strip():
                return out.stdout.strip().splitlines()[0]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        cupy = importlib.import_module("cupy")
        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        return name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return "unknown"


def _shape_arg(profile: dict[str, tuple[Shape, Shape, Shape]], which: int) -> str:
    return ",".join(f"{n}:{'x'.join(str(d) for d in p[which])}" for n, p in profile.items())


def trtexec_command(
    onnx_path: Path,
    engine_path: Path,
    profile: dict[str, tuple[Shape, Shape, Shape]],
    fp16: bool,
    workspace_bytes: int,
) -> list[str]:
    """The ``trtexec`` call that builds one engine (shapes as ``name:AxBxC``)."""
    cmd = [
        "trtexec",
        f"--onnx={onnx_path}",
        f"--saveEngine={engine_path}",
        f"--minShapes={_shape_arg(profile, 0)}",
        f"--optShapes={_shape_arg(profile, 1)}",
        f"--maxShapes={_shape_arg(profile, 2)}",
        f"--memPoolSize=workspace:{max(1, workspace_bytes >> 20)}M",
        "--skipInference",
    ]
    if fp16:
        cmd.append("--fp16")
    return cmd


def _trtexec_version(output: str) -> str:
    """``11.4.0`` from trtexec's ``[TensorRT v110400]`` banner (the banner if unparsed)."""
    match = re.search(r"TensorRT v(\d+)", output)
    if not match:
        return "unknown"
    digits = match.group(1)
    if len(digits) >= 5:
        return f"{int(digits[:-4])}.{int(digits[-4:-2])}.{int(digits[-2:])}"
    return digits


def build_with_trtexec(
    onnx_path: Path,
    engine_path: Path,
    profile: dict[str, tuple[Shape, Shape, Shape]],
    fp16: bool,
    workspace_bytes: int,
) -> str:
    """Build one engine with ``trtexec``; return the TensorRT version it reports."""
    cmd = trtexec_command(onnx_path, engine_path, profile, fp16, workspace_bytes)
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not engine_path.is_file():
        tail = (done.stdout + done.stderr)[-2000:]
        raise RuntimeError(f"trtexec failed for {onnx_path.name} ({done.returncode}):\n{tail}")
    return _trtexec_version(done.stdout + done.stderr)


def build_with_python(
    onnx_path: Path,
    engine_path: Path,
    profile: dict[str, tuple[Shape, Shape, Shape]],
    fp16: bool,
    workspace_bytes: int,
) -> str:
    """Build one engine with the TensorRT Python API; return its version."""
    trt: Any = importlib.import_module("tensorrt")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch: the only mode since TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    fp16_flag = getattr(trt.BuilderFlag, "FP16", None)  # weak typing may be gone in newer TRT
    if fp16 and fp16_flag is not None:
        config.set_flag(fp16_flag)
    opt_profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in profile.items():
        opt_profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(opt_profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT could not build an engine for {onnx_path}")
    engine_path.write_bytes(bytes(serialized))
    return str(trt.__version__)


BUILDERS = {"python": build_with_python, "trtexec": build_with_trtexec}


def _encoding(version_dir: Path) -> EncodingConfig | None:
    path = version_dir / GENERATOR_DIR / "encoding.json"
    return EncodingConfig.from_json(path.read_text()) if path.is_file() else None


def _reranker_tokens(version_dir: Path) -> int:
    path = version_dir / RERANKER_CONFIG
    if path.is_file():
        return int(json.loads(path.read_text()).get("max_length", RERANKER_MAX_TOKENS))
    return RERANKER_MAX_TOKENS


def retrieval_settings() -> RetrievalSettings:
    """The retrieval settings the engines are sized for (defaults, env overrides)."""
    fields: dict[str, Any] = {"port": 0}  # the port is required and irrelevant here
    return RetrievalSettings(**fields)


def step_tensorrt(ctx: BuildContext) -> str:
    """Build the engines (see the module docstring); skipped without TensorRT."""
    builder = find_builder()
    if builder is None:
        return SKIPPED
    execution = ExecutionSettings()
    shapes = served_shapes(
        retrieval_settings(), _encoding(ctx.version_dir), _reranker_tokens(ctx.version_dir)
    )
    gpu = gpu_name()
    built: dict[str, Any] = {}
    notes: list[str] = []
    version = "unknown"
    for name, rel in MODELS.items():
        onnx_path = ctx.version_dir / rel
        if not onnx_path.is_file():
            notes.append(f"{name}: no {rel}, skipped")
            continue
        try:
            profile = input_profiles(graph_inputs(onnx_path), shapes)
        except ValueError as exc:
            notes.append(f"{name}: {exc}, skipped")
            continue
        engine_rel = f"{TRT_DIR}/{name}.engine"
        t0 = time.perf_counter()
        print(f"  tensorrt: building {engine_rel} ({builder}) ...", flush=True)
        version = BUILDERS[builder](
            onnx_path,
            ctx.path(engine_rel),
            profile,
            execution.trt_fp16,
            execution.trt_workspace_bytes,
        )
        built[name] = {
            "engine": engine_rel,
            "seconds": round(time.perf_counter() - t0, 1),
            "profile": {k: {"min": v[0], "opt": v[1], "max": v[2]} for k, v in profile.items()},
        }
    ctx.config["tensorrt"] = {
        "version": version,
        "gpu": gpu,
        "builder": builder,
        "fp16": execution.trt_fp16,
        "workspace_bytes": execution.trt_workspace_bytes,
        "served_shapes": asdict(shapes),
        "profiles": built,
        "notes": notes,
    }
    names = ", ".join(built) or "none"
    extra = f"; {'; '.join(notes)}" if notes else ""
    return f"{len(built)} engine(s) ({names}) with TensorRT {version} on {gpu}{extra}"
