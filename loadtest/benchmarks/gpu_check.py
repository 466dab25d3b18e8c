"""Device check of the GPU path: providers, GPU vs CPU retrieval decoding, the per-step mask.

One run, meant for a lent GPU machine (``scripts/gpu_check.sh``) and runnable on the CPU:

1. what is installed: ONNX Runtime's execution providers, CuPy and its device, faiss GPUs,
   TensorRT (module / ``trtexec``), the GPU model;
2. the retrieval decode benchmark (the generator of an artifact, DERIVED test queries with
   the users' real history, ``generative_bench``'s query set and timing) on the CPU (the
   host search over ONNX Runtime on the CPU, ``--cpu-threads``) and on the GPU (I/O binding
   on the CUDA/TensorRT provider + the device search with CuPy trie masks) in the same run,
   at each batch size and beam width; queries/s and the GPU/CPU ratio;
3. top-10 agreement of GPU and CPU decoding (same lists, or lists that differ only among
   scores tied within 1e-4), and of the I/O-binding path on the CPU (numpy) with the host
   search, which runs everywhere;
4. the per-step mask: the allowed-token mask of batch × beam rows applied to the level's
   logits, on the device arrays (CuPy when a device is usable, else numpy), and the host
   mask plus its copy to the device for comparison.

Targets stated in the output: batch 64, beam 20 decodes >= 20x the CPU's queries/s; the
per-step mask <= 0.1 ms. Without a GPU provider the GPU rows say so and the CPU figures
stand alone. Writes ``docs/results/gpu_check.{json,md}`` (``--out``).

Usage::

    python -m loadtest.benchmarks.gpu_check [--artifact VERSION_DIR] [--batches 1 16 64]
        [--beams 20 100] [--queries 256] [--gpu-providers cuda,cpu]
"""

from __future__ import annotations

import argparse
import importlib
import os
import platform
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from loadtest.benchmarks.generative_bench import (
    TOP,
    QuerySet,
    agreement,
    test_queries,
    time_batches,
)
from models_export.evaluation.data import load_from_dir
from models_export.result_files import write_results
from models_export.tensorrt_step import find_builder, gpu_name
from services.common.config import artifact_root
from services.common.onnx_sessions import CPU, CUDA_PROVIDERS, ExecutionSettings
from services.retrieval.beam_search import BeamSearch, SearchOptions, SearchResult
from services.retrieval.device_masks import (
    DeviceTrie,
    array_module,
    mask_step_seconds,
    synchronize,
)
from services.retrieval.device_search import DeviceBeamSearch
from services.retrieval.encoding import InputEncoder
from services.retrieval.onnx_generator import (
    DECODER_MODEL,
    ENCODER_MODEL,
    GENERATOR_DIR,
    IoBindingStepModel,
    OnnxStepModel,
)
from services.retrieval.trie import SidTrie

TARGET_SPEEDUP = 20.0  # batch 64, beam 20: GPU queries/s over CPU queries/s
TARGET_BATCH, TARGET_BEAM = 64, 20
TARGET_MASK_MS = 0.1
MIN_TIMED = 16  # queries timed per cell at least (small batches)


class Searcher(Protocol):
    def search(
        self, batch: Any, options: Sequence[SearchOptions]
    ) -> list[SearchResult]: ...  # pragma: no cover


# --------------------------------------------------------------------------- environment


def _cupy_info() -> dict[str, Any]:
    try:
        cupy = importlib.import_module("cupy")
    except Exception as exc:
        return {"installed": False, "reason": f"{type(exc).__name__}: {exc}"}
    info: dict[str, Any] = {"installed": True, "version": str(cupy.__version__)}
    try:
        info["devices"] = int(cupy.cuda.runtime.getDeviceCount())
        if info["devices"]:
            name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
            info["device0"] = name.decode() if isinstance(name, bytes) else str(name)
    except Exception as exc:
        info["devices"] = 0
        info["reason"] = f"{type(exc).__name__}: {exc}"
    return info


def _faiss_gpus() -> int | str:
    try:
        faiss = importlib.import_module("faiss")
    except Exception as exc:
        return f"faiss not importable ({type(exc).__name__})"
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    return int(faiss.get_num_gpus())


def environment() -> dict[str, Any]:
    """What this machine offers the GPU path."""
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.system()}",
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "providers_available": list(ort.get_available_providers()),
        "cupy": _cupy_info(),
        "faiss_gpus": _faiss_gpus(),
        "tensorrt_builder": find_builder() or "none",
        "gpu": gpu_name() if shutil.which("nvidia-smi") or _cupy_info().get("devices") else "none",
    }


# --------------------------------------------------------------------------- decoders


def load_generator_inputs(version_dir: Path) -> tuple[np.ndarray, SidTrie, InputEncoder]:
    """The generator's SID codes, their trie and the input encoder of ``version_dir``."""
    gen = version_dir / GENERATOR_DIR
    codes = np.load(gen / "sid_codes.npy", allow_pickle=False).astype(np.int64)
    encoder = InputEncoder.load(gen, codes)
    return codes, SidTrie.build(codes, encoder.layout.codebook_sizes), encoder


def cpu_search(version_dir: Path, trie: SidTrie, codes: np.ndarray, threads: int) -> BeamSearch:
    """The host search over ONNX Runtime on the CPU (the default serving path)."""
    model = OnnxStepModel(
        version_dir / ENCODER_MODEL,
        version_dir / DECODER_MODEL,
        threads,
        ExecutionSettings(providers=[CPU]),
        allow_spinning=True,
    )
    layout = InputEncoder.load(version_dir / GENERATOR_DIR, codes).layout
    return BeamSearch(model, layout, trie, codes)


def device_search(
    version_dir: Path,
    trie: SidTrie,
    codes: np.ndarray,
    execution: ExecutionSettings,
    xp: ModuleType,
    threads: int = 1,
) -> DeviceBeamSearch:
    """I/O binding on ``execution``'s providers + the device search on ``xp`` arrays."""
    model = IoBindingStepModel(
        version_dir / ENCODER_MODEL, version_dir / DECODER_MODEL, threads, execution
    )
    layout = InputEncoder.load(version_dir / GENERATOR_DIR, codes).layout
    return DeviceBeamSearch(model, layout, DeviceTrie(trie, xp))


def gpu_setup(
    providers: list[str], version_dir: Path, trie: SidTrie, codes: np.ndarray
) -> tuple[DeviceBeamSearch | None, str]:
    """The GPU decoder, or None and why not."""
    available = ort.get_available_providers()
    execution = ExecutionSettings(providers=providers)
    gpu = [p for p in execution.providers if p in CUDA_PROVIDERS]
    usable = [p for p in gpu if p in available]
    if not usable:
        return None, (
            f"no GPU provider: onnxruntime {ort.__version__} has {', '.join(available)} "
            f"(asked for {', '.join(gpu) or 'none'}); the GPU decode was not run"
        )
    execution = ExecutionSettings(providers=[*usable, CPU])
    xp = array_module()
    search = device_search(version_dir, trie, codes, execution, xp)
    model = search.model
    assert isinstance(model, IoBindingStepModel)
    note = f"GPU decode: {model.provider}, device arrays {xp.__name__}"
    if xp is np:
        note += " (CuPy has no device: masks and top-k on the host)"
    return search, note


# --------------------------------------------------------------------------- measurements


def search_fn(
    search: Searcher, encoder: InputEncoder, qs: QuerySet, beam: int
) -> Callable[[list[int]], list[SearchResult]]:
    """Encode + search a batch of ``qs`` indices."""

    def run(idx: list[int]) -> list[SearchResult]:
        batch = qs.batch(encoder, idx)
        return search.search(batch, [SearchOptions(beam_width=beam, k=TOP)] * len(idx))

    return run


def queries_per_second(
    search: Searcher, encoder: InputEncoder, qs: QuerySet, batch: int, beam: int, batches: int
) -> float:
    """Mean queries/s over ``batches`` batches, at least :data:`MIN_TIMED` queries (after
    one warm-up batch)."""
    n = min(len(qs) // batch, max(batches, -(-MIN_TIMED // batch))) * batch
    if n == 0:
        return float("nan")
    timing = time_batches(search_fn(search, encoder, qs, beam), n, batch, warmup=1)
    return 1000.0 / float(np.mean(timing.per_query_ms))


def top10_agreement(
    a: Searcher, b: Searcher, encoder: InputEncoder, qs: QuerySet, beam: int, n: int
) -> dict[str, Any]:
    """Counts of same / tied / differing top-10 lists of ``a`` against ``b``."""
    counts = {"same": 0, "tie": 0, "diff": 0}
    examples: list[dict[str, Any]] = []
    n = min(n, len(qs))
    for start in range(0, n, 16):
        idx = list(range(start, min(start + 16, n)))
        ra = search_fn(a, encoder, qs, beam)(idx)
        rb = search_fn(b, encoder, qs, beam)(idx)
        for i, x, y in zip(idx, ra, rb, strict=True):
            verdict = agreement(
                (x.items.tolist(), x.scores.tolist()), (y.items.tolist(), y.scores.tolist())
            )
            counts[verdict] += 1
            if verdict == "diff" and len(examples) < 3:
                examples.append({"query": i, "a": x.items.tolist(), "b": y.items.tolist()})
    total = sum(counts.values())
    same_or_tied = (counts["same"] + counts["tie"]) / total if total else float("nan")
    return {**counts, "n": total, "beam": beam, "same_or_tied": same_or_tied, "diffs": examples}


def mask_timings(trie: SidTrie, xp: ModuleType, rows: Sequence[int]) -> list[dict[str, Any]]:
    """Per-step mask applied to a logits block on the device arrays, and the same with the
    mask built on the host (``SidTrie.next_mask``) and copied over, per row count."""
    device = DeviceTrie(trie, xp)
    level = trie.depth - 1
    out = []
    rng = np.random.default_rng(0)
    lo, hi = device.offsets[level], device.offsets[level + 1]
    for r in rows:
        device_ms = 1000 * mask_step_seconds(device, r)
        nodes = rng.integers(lo, hi, r).astype(np.int64)
        logits = xp.asarray(rng.standard_normal((r, trie.codebook_sizes[level]), np.float32))
        for _ in range(3):
            xp.where(xp.asarray(trie.next_mask(level, nodes)), logits, -np.inf)
        synchronize(xp)
        t0 = time.perf_counter()
        for _ in range(50):
            xp.where(xp.asarray(trie.next_mask(level, nodes)), logits, -np.inf)
        synchronize(xp)
        host_ms = 1000 * (time.perf_counter() - t0) / 50
        out.append(
            {
                "rows": r,
                "arrays": xp.__name__,
                "device_mask_ms": device_ms,
                "host_mask_and_copy_ms": host_ms,
                "level": level,
                "vocab": trie.codebook_sizes[level],
            }
        )
    return out


# --------------------------------------------------------------------------- report


def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None or not np.isfinite(x):
        return "—"
    return f"{x:.{digits}f}"


def targets(results: dict[str, Any]) -> dict[str, Any]:
    """The two targets: measured value and whether it was met (None: not measured)."""
    row = next(
        (
            r
            for r in results["throughput"]
            if r["batch"] == TARGET_BATCH and r["beam"] == TARGET_BEAM
        ),
        None,
    )
    speedup = row["speedup"] if row and row.get("speedup") is not None else None
    on_device = [m for m in results["mask"] if m["arrays"] != "numpy"]
    mask_ms = max((m["device_mask_ms"] for m in on_device), default=None)
    return {
        "speedup_b64_beam20": {
            "target": f">= {TARGET_SPEEDUP:g}x CPU queries/s",
            "measured": speedup,
            "met": None if speedup is None else bool(speedup >= TARGET_SPEEDUP),
        },
        "mask_ms": {
            "target": f"<= {TARGET_MASK_MS} ms per step (on the device)",
            "measured": mask_ms,
            "met": None if mask_ms is None else bool(mask_ms <= TARGET_MASK_MS),
        },
    }


def markdown(results: dict[str, Any]) -> str:
    env = results["environment"]
    cupy = env["cupy"]
    verdict = {True: "MET", False: "NOT MET", None: "not measured (no GPU)"}
    t = results["targets"]
    lines = [
        "# GPU check: providers, GPU vs CPU decoding, per-step mask",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {env['machine']}; GPU: {env['gpu']}; Python {env['python']}, "
        f"onnxruntime {env['onnxruntime']}, numpy {env['numpy']}.  ",
        f"Artifact: `{results['artifact']}`. Queries: {results['queries']}. Top-{TOP}; CPU = "
        f"host search over ONNX Runtime on the CPU ({results['cpu_threads']} intra-op "
        "threads); GPU = I/O binding + device search.",
        "",
        "## Installed",
        "",
        f"- ONNX Runtime providers: {', '.join(env['providers_available'])}",
        f"- CuPy: {cupy.get('version', 'not installed')}, devices "
        f"{cupy.get('devices', 0)} {cupy.get('device0', '')} {cupy.get('reason', '')}".rstrip(),
        f"- faiss GPUs: {env['faiss_gpus']}",
        f"- TensorRT builder: {env['tensorrt_builder']}",
        f"- GPU decode: {results['gpu_note']}",
        "",
        "## Targets",
        "",
        f"- batch {TARGET_BATCH}, beam {TARGET_BEAM}: {t['speedup_b64_beam20']['target']}: "
        f"measured {_fmt(t['speedup_b64_beam20']['measured'])}x — "
        f"{verdict[t['speedup_b64_beam20']['met']]}",
        f"- per-step mask {t['mask_ms']['target']}: measured "
        f"{_fmt(t['mask_ms']['measured'], 4)} ms — {verdict[t['mask_ms']['met']]}",
        "",
        "## Throughput (queries/s)",
        "",
        "| batch | beam | CPU q/s | GPU q/s | GPU / CPU |",
        "|---|---|---|---|---|",
    ]
    for r in results["throughput"]:
        lines.append(
            f"| {r['batch']} | {r['beam']} | {_fmt(r['cpu_qps'])} | {_fmt(r.get('gpu_qps'))} | "
            f"{_fmt(r.get('speedup'))} |"
        )
    lines += [
        "",
        "## Top-10 agreement",
        "",
        "| compared | beam | same | tied | differ | n |",
        "|---|---|---|---|---|---|",
    ]
    for name, rows in results["agreement"].items():
        for a in rows:
            lines.append(
                f"| {name} | {a['beam']} | {a['same']} | {a['tie']} | {a['diff']} | {a['n']} |"
            )
    lines += [
        "",
        "## Per-step mask",
        "",
        "| rows (batch × beam) | vocab | arrays | device mask ms | host mask + copy ms |",
        "|---|---|---|---|---|",
    ]
    for m in results["mask"]:
        lines.append(
            f"| {m['rows']} | {m['vocab']} | {m['arrays']} | {_fmt(m['device_mask_ms'], 4)} | "
            f"{_fmt(m['host_mask_and_copy_ms'], 4)} |"
        )
    lines += ["", "Notes:", ""] + [f"- {n}" for n in results["notes"]] + [""]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=None, help="version dir (CURRENT)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--beams", type=int, nargs="+", default=[20, 100])
    parser.add_argument("--queries", type=int, default=256, help="test queries sampled")
    parser.add_argument(
        "--batches-per-cell", type=int, default=3, help="timed batches per (batch, beam)"
    )
    parser.add_argument("--parity-queries", type=int, default=64)
    parser.add_argument(
        "--cpu-threads", type=int, default=min(os.cpu_count() or 1, 16), help="ORT CPU threads"
    )
    parser.add_argument("--gpu-providers", default="cuda,cpu", help="e.g. tensorrt,cuda,cpu")
    parser.add_argument("--mask-rows", type=int, nargs="+", default=[64 * 20, 64 * 100])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("docs/results/gpu_check"))
    args = parser.parse_args(argv)
    t_start = time.perf_counter()
    root = artifact_root()
    version_dir = args.artifact or root / (root / "CURRENT").read_text().strip()
    env = environment()
    print(f"environment: {env}", flush=True)
    codes, trie, encoder = load_generator_inputs(version_dir)
    data = load_from_dir(version_dir, with_embeddings=False)
    qs = test_queries(data, args.queries, args.seed)
    notes = [
        "Queries are DERIVED from the test target's category path, with the user's real "
        "history; throughput = queries / wall time of encode + search per batch (one "
        "warm-up batch left out).",
        "The GPU/CPU ratio compares this machine's CPU (all its cores given to ONNX Runtime "
        "unless --cpu-threads says otherwise) with its GPU in the same run.",
    ]
    cpu = cpu_search(version_dir, trie, codes, args.cpu_threads)
    gpu, gpu_note = gpu_setup(
        [p for p in args.gpu_providers.split(",") if p], version_dir, trie, codes
    )
    print(gpu_note, flush=True)
    notes.append(gpu_note)
    cpu_bound = device_search(version_dir, trie, codes, ExecutionSettings(providers=[CPU]), np)

    throughput: list[dict[str, Any]] = []
    for beam in args.beams:
        for batch in args.batches:
            row: dict[str, Any] = {"batch": batch, "beam": beam}
            row["cpu_qps"] = queries_per_second(
                cpu, encoder, qs, batch, beam, args.batches_per_cell
            )
            if gpu is not None:
                row["gpu_qps"] = queries_per_second(
                    gpu, encoder, qs, batch, beam, args.batches_per_cell
                )
                row["speedup"] = row["gpu_qps"] / row["cpu_qps"]
            throughput.append(row)
            print(f"throughput {row}", flush=True)

    agreement_rows: dict[str, list[dict[str, Any]]] = {"cpu io-binding (numpy) vs cpu": []}
    if gpu is not None:
        agreement_rows["gpu vs cpu"] = []
    for beam in args.beams:
        agreement_rows["cpu io-binding (numpy) vs cpu"].append(
            top10_agreement(cpu_bound, cpu, encoder, qs, beam, args.parity_queries)
        )
        if gpu is not None:
            agreement_rows["gpu vs cpu"].append(
                top10_agreement(gpu, cpu, encoder, qs, beam, args.parity_queries)
            )
    print(f"agreement {agreement_rows}", flush=True)

    xp = array_module()
    mask = mask_timings(trie, xp, args.mask_rows)
    print(f"mask {mask}", flush=True)
    if xp is np:
        notes.append(
            "Per-step mask: no CUDA device visible to CuPy, so the 'device' arrays are numpy "
            "on the CPU; the <= 0.1 ms target applies to the GPU and is not measured here."
        )
    results: dict[str, Any] = {
        "command": "python -m loadtest.benchmarks.gpu_check "
        + shlex.join(sys.argv[1:] if argv is None else list(argv)),
        "environment": env,
        "artifact": str(version_dir),
        "queries": f"{len(qs)} ({qs.name})",
        "cpu_threads": args.cpu_threads,
        "gpu_note": gpu_note,
        "throughput": throughput,
        "agreement": agreement_rows,
        "mask": mask,
        "notes": notes,
    }
    results["targets"] = targets(results)
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    md = markdown(results)
    write_results(args.out, results, md)
    print(md)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
