"""Where a decoder step's time goes: ONNX Runtime's own profiler, kernel time per op type.

``python -m loadtest.benchmarks.decoder_profile [--model reference|serving] [--beams 1] [--past 0]``

One decoder step of the CURRENT artifact's generator (or of seeded random weights at the
published reference size), with ``--beams`` hypotheses and ``--past`` cached steps,
run under ORT's profiler on one intra-op thread. Prints the unprofiled time per run, the
number of kernels per run and each op type's share of the kernel time (the profiler
itself slows every kernel down, so read the shares, not the absolute figures). Used to
decide what an export change would buy; it changes nothing.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from loadtest.benchmarks.generative_bench import current_subject
from services.retrieval.onnx_generator import (
    DECODER_MODEL,
    cross_names,
    kv_names,
    session_options,
)

RUNS = 200


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["serving", "reference"], default="reference")
    parser.add_argument("--beams", type=int, default=1)
    parser.add_argument("--past", type=int, default=0, help="cached decoder steps")
    parser.add_argument("--source-len", type=int, default=85, help="encoder positions")
    args = parser.parse_args()
    _, subject, model_dir = current_subject(args.model, threads=1)
    m = subject.onnx
    slots = int(m.encoder.get_inputs()[0].shape[-1])
    mask = np.ones((1, args.source_len), np.int64)
    cross = m.encode(np.zeros((1, args.source_len, slots), np.int64), mask)
    past = np.zeros((args.beams, m.num_heads, args.past, m.d_kv), np.float32)
    feeds: dict[str, np.ndarray] = {
        "tokens": np.zeros((1, args.beams), np.int64),
        "beam_rows": np.arange(args.beams, dtype=np.int64),
    }
    feeds.update(zip(cross_names(m.num_layers), cross, strict=True))
    feeds.update((name, past) for name in kv_names("past", m.num_layers))
    for _ in range(20):
        m.decoder.run(None, feeds)
    start = time.perf_counter()
    for _ in range(RUNS):
        m.decoder.run(None, feeds)
    plain_ms = (time.perf_counter() - start) / RUNS * 1000

    opts = session_options(1)
    opts.enable_profiling = True
    opts.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="ort-profile-")) / "step")
    session = ort.InferenceSession(
        str(model_dir / DECODER_MODEL), opts, providers=["CPUExecutionProvider"]
    )
    for _ in range(RUNS):
        session.run(None, feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    kernels = [e for e in events if e.get("cat") == "Node" and e["name"].endswith("_kernel_time")]
    by_op: Counter[str] = Counter()
    for e in kernels:
        by_op[e["args"]["op_name"]] += e["dur"]
    total = sum(by_op.values())
    print(
        f"{args.model} decoder step, {args.beams} beam(s), {args.past} cached step(s): "
        f"{plain_ms:.2f} ms per run unprofiled, {len(kernels) / RUNS:.0f} kernels per run"
    )
    for op, dur in by_op.most_common(12):
        print(f"  {op:32s} {100 * dur / total:5.1f} % of kernel time")


if __name__ == "__main__":
    main()
