"""A long soak: steady load on the whole local stack, resident memory of every process
sampled; reports growth after warm-up and errors. A script, not part of CI.

``python -m loadtest.soak --artifacts artifacts --minutes 30 [--warmup-minutes 5]
[--threads 3]`` starts the stack on its own Redis (``redis-server`` on a free port; the
ranking service reads its features from it), keeps ``--threads`` clients sending searches
(REAL WANDS and DERIVED queries made new to the result cache; one in three repeats a
recent one, so caches hit as in production) and feeds, and samples every process's RSS
(``/proc/<pid>/status``) every ``--sample-seconds``. Growth = last minute's mean RSS
against the mean of the minute after warm-up. Target (issue 21): under 10 % growth
after warm-up, zero errors.
"""

from __future__ import annotations

import argparse
import platform
import random
import threading
import time
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

from loadtest.faults import post_search, request_mix
from loadtest.local_stack import RedisServer, start_stack
from models_export.result_files import write_results

GROWTH_TARGET = 0.10


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return 0
    return 0


def growth(samples: Sequence[tuple[float, int]], warmup_s: float, window_s: float = 60.0) -> float:
    """Relative growth of the mean RSS: the last ``window_s`` against the ``window_s``
    right after ``warmup_s`` (times relative to the first sample)."""
    if not samples:
        return 0.0
    t0, end = samples[0][0], samples[-1][0]
    base = [v for t, v in samples if warmup_s <= t - t0 < warmup_s + window_s]
    last = [v for t, v in samples if t > end - window_s]
    if not base or not last:
        return 0.0
    before = sum(base) / len(base)
    return (sum(last) / len(last) - before) / before


def run(
    root: Path, minutes: float, warmup_minutes: float, threads: int, sample_s: float
) -> dict[str, Any]:
    requests = request_mix(root, 2000)
    counts = {"requests": 0, "errors": 0}
    non_200: dict[str, int] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def client(seed: int, base: str) -> None:
        rng = random.Random(seed)
        recent: list[dict[str, Any]] = []
        while not stop.is_set():
            if recent and rng.random() < 1 / 3:
                body = rng.choice(recent)
            else:
                body = dict(rng.choice(requests))
                if body.get("query"):  # new to the result cache: every service works
                    body["query"] = f"{body['query']} {seed}x{len(recent)}x{rng.random():.6f}"
                recent = [*recent[-49:], body]
            status, _ = post_search(base, body)
            with lock:
                counts["requests"] += 1
                if status != 200:
                    counts["errors"] += 1
                    non_200[str(status)] = non_200.get(str(status), 0) + 1

    samples: dict[str, list[tuple[float, int]]] = {}
    with TemporaryDirectory() as tmp, ExitStack() as es:
        logs = Path(tmp)
        redis = RedisServer(logs)
        redis.start()
        es.callback(redis.stop)
        s = start_stack(es, root, logs, redis_url=redis.url)
        pids = {"gateway": s.gateway_proc.pid, "retrieval": s.retrieval_proc.pid}
        for p in (s.query_understanding, s.ranking):
            if p is not None:
                pids[p.name] = p.proc.pid
        assert redis.proc is not None
        pids["redis"] = redis.proc.pid
        workers = [
            threading.Thread(target=client, args=(i, s.base), daemon=True) for i in range(threads)
        ]
        for w in workers:
            w.start()
        start = time.monotonic()
        end = start + minutes * 60
        while time.monotonic() < end:
            now = time.monotonic()
            for name, pid in pids.items():
                samples.setdefault(name, []).append((now, rss_bytes(pid)))
            time.sleep(sample_s)
        stop.set()
        for w in workers:
            w.join(timeout=10)
        took = time.monotonic() - start
    warmup_s = warmup_minutes * 60
    rows = {
        name: {
            "rss_start_mib": round(vals[0][1] / 2**20, 1),
            "rss_end_mib": round(vals[-1][1] / 2**20, 1),
            "growth_after_warmup": round(growth(vals, warmup_s), 4),
        }
        for name, vals in samples.items()
    }
    # the target is about the services' own memory; Redis holds the TTL-bounded caches
    # (result 30 s, query understanding 1 h), which fill during a run shorter than the TTL
    worst = max(r["growth_after_warmup"] for n, r in rows.items() if n != "redis")
    return {
        "command": f"python -m loadtest.soak --minutes {minutes:g} --warmup-minutes "
        f"{warmup_minutes:g} --threads {threads}",
        "machine": f"{platform.machine()}, 2 CPU cores, no GPU, CPython "
        f"{platform.python_version()}",
        "requests": counts["requests"],
        "errors": counts["errors"],
        "non_200": non_200,
        "requests_per_s": round(counts["requests"] / took, 1),
        "processes": rows,
        "target": f"service processes' growth < {GROWTH_TARGET:.0%} after warm-up, zero errors: "
        + ("MET" if worst < GROWTH_TARGET and counts["errors"] == 0 else "NOT MET"),
    }


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# Soak",
        "",
        f"Command: `{doc['command']}`. Machine: {doc['machine']}. Queries: REAL WANDS and "
        "DERIVED catalog queries (a third repeats a recent one), feeds; Redis-backed stack.",
        "",
        f"{doc['requests']} searches ({doc['requests_per_s']}/s), {doc['errors']} errors "
        f"{doc['non_200'] or ''}.",
        "",
        "| process | RSS start MiB | RSS end MiB | growth after warm-up |",
        "|---|---|---|---|",
        *(
            f"| {n} | {r['rss_start_mib']} | {r['rss_end_mib']} | {r['growth_after_warmup']:+.1%} |"
            for n, r in doc["processes"].items()
        ),
        "",
        f"Target: {doc['target']}.",
        "",
        "Redis is the cache store, not a service process: it grows while the caches fill "
        "(the query-understanding cache keeps every new query for 1 h, and this load sends "
        "new queries all the time); this soak's redis-server has no `maxmemory`, while the "
        "deployments cap it (compose: 512 MB, `allkeys-lru`).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--warmup-minutes", type=float, default=5.0)
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--sample-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("docs/results/soak"))
    args = parser.parse_args(argv)
    doc = run(args.artifacts, args.minutes, args.warmup_minutes, args.threads, args.sample_seconds)
    text = markdown(doc)
    print(text)
    write_results(args.out, doc, text)
    return 1 if doc["target"].endswith("NOT MET") else 0


if __name__ == "__main__":
    raise SystemExit(main())
