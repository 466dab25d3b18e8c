"""Headless load test: (optionally) start the local stack, run Locust, check the SLO.

::

    python -m loadtest.run --start-stack --out .cache/loadtest
    python -m loadtest.run --host http://127.0.0.1:8000 --users 32 --duration 120s --out DIR
    python -m loadtest.run --start-stack --shape spike --grpc --out DIR

Locust runs as a subprocess (it monkey-patches the process with gevent) and writes
``DIR/locust_stats.csv`` (and the other ``locust_*.csv``) and ``DIR/report.html``. Exits
0 when the run meets the SLO, 1 when it misses it, 2 when Locust itself failed.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Sequence
from contextlib import ExitStack
from pathlib import Path

from loadtest.local_stack import REPO_ROOT, start_stack
from loadtest.slo_check import DEFAULT_SLO, evaluate, load_slo, read_stats, report
from services.common.config import ARTIFACT_DIR_ENV, artifact_root

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
CSV_PREFIX = "locust"
STACK = "stack"  # --grpc without an address: the retrieval service of --start-stack


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Run the Locust load test headless; check the SLO.")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--host", help="gateway base URL, e.g. http://127.0.0.1:8000")
    target.add_argument(
        "--start-stack", action="store_true", help="start the local stack and test it"
    )
    p.add_argument("--out", type=Path, required=True, help="directory for the reports")
    p.add_argument("--users", type=int, default=16, help="concurrent users (without --shape)")
    p.add_argument("--spawn-rate", type=float, default=4.0, help="users started per second")
    p.add_argument(
        "--duration",
        default=None,
        help="run time, e.g. 60s or 5m (default 60s; a shape ends itself)",
    )
    p.add_argument("--shape", choices=("step", "spike"), help="load shape (loadtest/shapes.py)")
    p.add_argument("--slo", type=Path, default=DEFAULT_SLO, help="SLO YAML file")
    p.add_argument(
        "--grpc",
        nargs="?",
        const=STACK,
        default="",
        metavar="HOST:PORT",
        help="also call retrieval's Retrieve over gRPC (no address: the started stack's)",
    )
    p.add_argument(
        "--artifact-dir",
        type=Path,
        default=None,
        help=f"artifact repository (default ${ARTIFACT_DIR_ENV} or ./artifacts)",
    )
    p.add_argument("--redis-url", default="", help="Redis for the started stack's gateway")
    args = p.parse_args(argv)
    if args.grpc == STACK and not args.start_stack:
        p.error("--grpc without an address needs --start-stack")
    return args


def locust_command(args: argparse.Namespace, host: str) -> list[str]:
    """The ``python -m locust`` command line for ``args`` against ``host``."""
    out: Path = args.out
    cmd = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        host,
        "--csv",
        str(out / CSV_PREFIX),
        "--html",
        str(out / "report.html"),
        "--only-summary",
        # failures are judged by the SLO's error rate, not by Locust's exit code
        "--exit-code-on-error",
        "0",
    ]
    if not args.shape:
        cmd += ["--users", str(args.users), "--spawn-rate", str(args.spawn_rate)]
    duration = args.duration or (None if args.shape else "60s")
    if duration:
        cmd += ["--run-time", duration]
    return cmd


def run_locust(args: argparse.Namespace, host: str, retrieval_addr: str, artifacts: Path) -> int:
    """Run Locust to completion; its exit code."""
    env = {**os.environ, ARTIFACT_DIR_ENV: str(artifacts.resolve())}
    env.pop("GENSEARCH_LOCUST_SHAPE", None)
    env.pop("GENSEARCH_LOCUST_RETRIEVAL_ADDR", None)
    if args.shape:
        env["GENSEARCH_LOCUST_SHAPE"] = args.shape
    if retrieval_addr:
        env["GENSEARCH_LOCUST_RETRIEVAL_ADDR"] = retrieval_addr
    cmd = locust_command(args, host)
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO_ROOT, env=env, check=False).returncode


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    artifacts: Path = args.artifact_dir or artifact_root()
    slo = load_slo(args.slo)  # a broken SLO file should fail before the run, not after
    with ExitStack() as stack:
        host, retrieval_addr = args.host, args.grpc
        if args.start_stack:
            logs = args.out / "stack-logs"
            logs.mkdir(exist_ok=True)
            print(f"starting the local stack on {artifacts} (logs: {logs})", flush=True)
            s = start_stack(stack, artifacts, logs, redis_url=args.redis_url)
            host = s.base
            if retrieval_addr == STACK:
                retrieval_addr = f"127.0.0.1:{s.retrieval_port}"
        code = run_locust(args, host, retrieval_addr, artifacts)
    stats = args.out / f"{CSV_PREFIX}_stats.csv"
    if code != 0 or not stats.is_file():
        print(f"locust failed (exit code {code}; {stats} present: {stats.is_file()})")
        return 2
    return report(evaluate(read_stats(stats), slo))


if __name__ == "__main__":
    sys.exit(main())
