"""The README's main job (``python -m services.stack``): a real answer, and a clean stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO_ROOT, free_port, wait_for

pytestmark = pytest.mark.e2e


def _env(artifact_root: Path) -> dict[str, str]:
    rport = free_port()
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "GENSEARCH_ARTIFACT_DIR": str(artifact_root),
        "GENSEARCH_RETRIEVAL_PORT": str(rport),
        "GENSEARCH_RETRIEVAL_METRICS_PORT": str(free_port()),
        "GENSEARCH_GATEWAY_PORT": str(free_port()),
        "GENSEARCH_GATEWAY_RETRIEVAL_ADDR": f"127.0.0.1:{rport}",
    }


def _answer(output: str) -> dict[str, object]:
    start = output.index("{", output.index("[stack] POST"))
    return dict(json.JSONDecoder().raw_decode(output, start)[0])


def test_main_job_prints_a_real_answer(artifact_root: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "services.stack", "--once"],
        cwd=REPO_ROOT,
        env=_env(artifact_root),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    answer = _answer(done.stdout)
    items = answer["items"]
    assert isinstance(items, list) and len(items) == 5
    assert all(item["source"] in ("generated", "lexical", "dense", "ann") for item in items)
    assert answer["artifact_version"] and answer["degraded"] == []
    # the artifact has a RAG reranker: the demo also asks for an LLM's context
    start = done.stdout.index("{", done.stdout.index("/v1/rag/context"))
    context = json.JSONDecoder().raw_decode(done.stdout, start)[0]
    assert context["degraded"] == [] and len(context["searched_item_ids"]) == 5
    assert len(context["documents"]) <= 2
    assert "[stack] stopped" in done.stdout


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_sigterm_stops_every_service(artifact_root: Path, tmp_path: Path) -> None:
    env = _env(artifact_root)
    ports = [int(env["GENSEARCH_GATEWAY_PORT"]), int(env["GENSEARCH_RETRIEVAL_PORT"])]
    log = tmp_path / "stack.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.stack"],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: "serving at" in log.read_text(), 240, "the main job's answer")
        assert all(_listening(p) for p in ports)
        proc.send_signal(signal.SIGTERM)  # what a supervisor (or Ctrl-C's SIGINT) does
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    text = log.read_text()
    assert "retrieval.1 stopped" in text and "gateway.1 stopped" in text
    assert "[stack] stopped" in text
    wait_for(lambda: not any(_listening(p) for p in ports), 10, "the services' ports to close")
