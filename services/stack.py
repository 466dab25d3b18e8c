"""The main job: build artifacts if missing, start the local stack, serve a real search.

``python -m services.stack`` (what ``make run`` does). The services run under
honcho from ``deploy/local/Procfile``; Ctrl-C stops them all. Addresses and
ports come from the environment, with local defaults. The artifacts are the CURRENT
version under ``$GENSEARCH_ARTIFACT_DIR``; a missing one is built from the dataset
``$GENSEARCH_DATASET`` under ``$GENSEARCH_DATA_DIR`` (a missing input file ends the
command with one line and exit code 2). On a catalog without item text the demo is a
query-less recommendation request.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from services.common.artifacts import ArtifactRepository
from services.common.config import artifact_root
from services.common.errors import NotFoundError

ROOT = Path(__file__).resolve().parent.parent
INPUT_ERROR_EXIT = 2
PROCFILE = ROOT / "deploy" / "local" / "Procfile"
DEFAULTS = {
    "GENSEARCH_RETRIEVAL_PORT": "50051",
    "GENSEARCH_RETRIEVAL_METRICS_PORT": "9101",
    "GENSEARCH_GATEWAY_PORT": "8000",
    "GENSEARCH_GATEWAY_RETRIEVAL_ADDR": "127.0.0.1:50051",
    "GENSEARCH_QU_PORT": "50052",
    "GENSEARCH_QU_METRICS_PORT": "9102",
    "GENSEARCH_RANKING_PORT": "50053",
    "GENSEARCH_RANKING_METRICS_PORT": "9103",
    "GENSEARCH_RAG_RERANK_PORT": "50054",
    "GENSEARCH_RAG_RERANK_METRICS_PORT": "9104",
}
#: how long a ready gateway waits for its optional stages before the demo search
OPTIONAL_STAGE_GRACE_S = 60.0
QU_ADDR_ENV = "GENSEARCH_GATEWAY_QUERY_UNDERSTANDING_ADDR"
RANKING_ADDR_ENV = "GENSEARCH_GATEWAY_RANKING_ADDR"
RAG_ADDR_ENV = "GENSEARCH_GATEWAY_RAG_RERANK_ADDR"


def ensure_artifacts(full: bool) -> str:
    """The artifact version to serve, building one (quick by default) when none exists."""
    repo = ArtifactRepository(artifact_root())
    try:
        return repo.current()
    except NotFoundError:
        pass
    from models_export.dataset_files import DataInputError, named

    try:
        dataset = named()
    except DataInputError as exc:
        print(f"[stack] error: {exc}", file=sys.stderr)
        raise SystemExit(INPUT_ERROR_EXIT) from None
    kind = "full" if full else "quick"
    print(
        f"[stack] no artifacts under {repo.root}: building a {kind} version of "
        f"{dataset.name} (progress below)"
    )
    cmd = [sys.executable, "-m", "models_export", "artifacts", *([] if full else ["--quick"])]
    built = subprocess.run(cmd, cwd=ROOT, check=False)
    if built.returncode != 0:  # the build printed why
        raise SystemExit(built.returncode)
    return repo.current()


def has_text(version: str) -> bool:
    """Whether ``version`` was built with item text (else it answers recommendations only)."""
    config = ArtifactRepository(artifact_root()).open(version).manifest.config
    return bool(config.get("has_text", True))


def processes(version: str) -> list[str]:
    """The Procfile entries to start: query understanding, ranking and RAG rerank only
    when ``version`` has their models (a catalog without item text has none of them)."""
    from services.query_understanding.lexicon import LEXICON_FILE
    from services.rag_rerank.model import RERANKER_CONFIG
    from services.ranking.model import RANKER_MODEL

    arts = ArtifactRepository(artifact_root()).open(version)
    stages = (
        ("query_understanding", LEXICON_FILE),
        ("ranking", RANKER_MODEL),
        ("rag_rerank", RERANKER_CONFIG),
    )
    optional = [name for name, rel in stages if arts.has(rel)]
    return ["retrieval", *optional, "gateway"]


def _get(url: str, timeout: float = 2.0) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")
    except (urllib.error.URLError, OSError) as err:
        return 0, {"reason": str(err)}


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    """Poll ``/readyz`` and show its reason until the gateway is ready."""
    end = time.monotonic() + timeout
    last = ""
    ready_since = 0.0
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise SystemExit(f"[stack] a service exited early (honcho status {proc.returncode})")
        status, body = _get(f"{base}/readyz")
        reason = str(body.get("reason", ""))
        stages = body.get("optional_stages")
        waiting = (
            [n for n, s in stages.items() if s != "SERVING"] if isinstance(stages, dict) else []
        )
        if status == 200 and not waiting:
            print(f"[stack] ready: {reason}")
            return
        if status == 200:  # searches would be answered, degraded: give the stages a moment
            ready_since = ready_since or time.monotonic()
            if time.monotonic() - ready_since > OPTIONAL_STAGE_GRACE_S:
                print(f"[stack] ready without {', '.join(waiting)} (answers say degraded)")
                return
            reason = f"{reason}; waiting for {', '.join(waiting)}"
        if reason != last:
            print(f"[stack] waiting for readiness: {reason or 'gateway starting'}")
            last = reason
        time.sleep(0.5)
    raise SystemExit(f"[stack] not ready after {timeout:.0f}s: {last}")


def demo_search(base: str, query: str, user_id: str) -> dict[str, object]:
    """POST one search and return the parsed answer."""
    payload = json.dumps({"query": query, "user_id": user_id, "k": 5, "debug": True}).encode()
    request = urllib.request.Request(
        f"{base}/v1/search", data=payload, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return dict(json.loads(reply.read()))


def demo_rag_context(base: str, question: str) -> dict[str, object]:
    """POST one RAG context request (the passages worth giving an LLM) and return it."""
    payload = json.dumps({"query": question, "items": 5, "max_documents": 2}).encode()
    request = urllib.request.Request(
        f"{base}/v1/rag/context", data=payload, headers={"content-type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        return dict(json.loads(reply.read()))


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="build the full artifacts if missing")
    parser.add_argument("--once", action="store_true", help="stop after the demo search")
    parser.add_argument("--query", default="digital caliper")
    parser.add_argument("--user-id", default="0")
    parser.add_argument("--ready-timeout", type=float, default=300.0)
    args = parser.parse_args()

    # Ctrl-C and a supervisor's SIGTERM both stop the services: without this, SIGTERM
    # would end this process before ``finally`` and leave honcho's group running, and a
    # shell that starts us in the background hands us SIGINT ignored.
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    version = ensure_artifacts(args.full)
    env = {**DEFAULTS, **os.environ, "PYTHONUNBUFFERED": "1"}
    names = processes(version)
    if "query_understanding" in names:
        env.setdefault(QU_ADDR_ENV, f"127.0.0.1:{env['GENSEARCH_QU_PORT']}")
    if "ranking" in names:
        env.setdefault(RANKING_ADDR_ENV, f"127.0.0.1:{env['GENSEARCH_RANKING_PORT']}")
    if "rag_rerank" in names:
        env.setdefault(RAG_ADDR_ENV, f"127.0.0.1:{env['GENSEARCH_RAG_RERANK_PORT']}")
    # The Procfile says ``python``: make it this interpreter (the project's venv).
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    base = f"http://127.0.0.1:{env['GENSEARCH_GATEWAY_PORT']}"
    print(
        f"[stack] starting {', '.join(names)} from {PROCFILE.relative_to(ROOT)} "
        f"on artifact {version}"
    )
    honcho = [sys.executable, "-m", "honcho", "-f", str(PROCFILE), "-d", str(ROOT), "start"]
    honcho += names
    proc = subprocess.Popen(honcho, cwd=ROOT, env=env, start_new_session=True)
    try:
        wait_ready(base, proc, args.ready_timeout)
        query = args.query if has_text(version) else ""
        if query != args.query:
            print("[stack] this catalog has no item text: the demo is a recommendation feed")
        answer = demo_search(base, query, args.user_id)
        print(f"[stack] POST {base}/v1/search query={query!r} user_id={args.user_id!r}:")
        print(json.dumps(answer, indent=2))
        if "rag_rerank" in names and query:
            question = f"which brand makes the {query}?"
            context = demo_rag_context(base, question)
            print(f"[stack] POST {base}/v1/rag/context query={question!r} (for an LLM):")
            print(json.dumps(context, indent=2))
        if args.once:
            return 0
        print(f"[stack] serving at {base} (docs at {base}/docs); Ctrl-C stops everything")
        return proc.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        print("[stack] stopped")


if __name__ == "__main__":
    sys.exit(main())
