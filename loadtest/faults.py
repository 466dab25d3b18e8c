"""Fault tests under load, on loopback: kill -9 each downstream service and Redis mid-run,
SIGTERM each process mid-burst, and measure what clients saw.

``python -m loadtest.faults --artifacts artifacts [--fault-seconds 4] [--only ranking ...]``
starts the whole local stack on its own Redis (``redis-server`` on a free port), keeps a
steady load on the gateway (threads sending searches with REAL WANDS and DERIVED queries,
known users and feeds) and, one scenario at a time:

* ``kill``: ``kill -9`` a process, keep the load on for ``--fault-seconds``, restart it on
  the same port; report the 5xx share and the share of answers that name the stage in
  ``degraded`` during the fault, the restarted process's time to SERVING, and the time
  from SERVING to the first healthy answer again (recovery). Redis comes back empty: the
  gateway materialises the version again, recovery is the first user-feature hit after it.
* ``sigterm``: a burst of concurrent searches, then SIGTERM to the process while they are
  in flight; report how many of them failed (non-200) -- a graceful drain finishes them
  -- then restart the process.

Targets (issue 21): no 5xx while one optional stage (query understanding, ranking, Redis)
is down; recovery within 5 s of the restart; zero failed in-flight requests on SIGTERM.
Retrieval is not optional: a search with a query cannot be answered without it (503, by
design); feeds fall back to popular items.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import grpc

from loadtest.benchmarks.workload import load_workload
from loadtest.local_stack import (
    QU,
    RANKING,
    RETRIEVAL,
    RedisServer,
    ServiceKind,
    ServiceProcess,
    Stack,
    start_service,
    start_stack,
    wait_for,
)
from models_export.dataset_files import wands_queries
from models_export.result_files import write_results
from services.common.config import data_dir

RECOVERY_TARGET_S = 5.0


@dataclass(frozen=True, slots=True)
class Outcome:
    at: float  # monotonic time the request was sent
    done: float
    status: int  # 0: connection error
    degraded: tuple[str, ...]
    feed: bool


def post_search(base: str, body: dict[str, Any], timeout: float = 5.0) -> tuple[int, Any]:
    """One ``POST /v1/search``; (status, parsed body); status 0 on a connection error."""
    req = urllib.request.Request(
        f"{base}/v1/search",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as err:
        return err.code, None
    except (urllib.error.URLError, OSError):
        return 0, None


class Load:
    """Searches from ``threads`` threads in a loop until :meth:`stop`; every outcome kept."""

    def __init__(self, base: str, requests: Sequence[dict[str, Any]], threads: int = 3) -> None:
        self.base, self.requests, self.threads = base, list(requests), threads
        self.outcomes: list[Outcome] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._workers: list[threading.Thread] = []

    def _run(self, seed: int) -> None:
        rng = random.Random(seed)
        n = 0
        while not self._stop.is_set():
            body = dict(rng.choice(self.requests))
            if body.get("query"):  # a new string each time: the result cache must not answer
                body["query"] = f"{body['query']} {seed}x{n}"
            n += 1
            sent = time.monotonic()
            status, reply = post_search(self.base, body)
            degraded = tuple(reply.get("degraded", [])) if isinstance(reply, dict) else ()
            with self._lock:
                self.outcomes.append(
                    Outcome(sent, time.monotonic(), status, degraded, not body.get("query"))
                )

    def start(self) -> None:
        for i in range(self.threads):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._workers.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._workers:
            t.join(timeout=10)

    def between(self, start: float, end: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if start <= o.at < end]


def request_mix(root: Path, n: int = 400, seed: int = 0) -> list[dict[str, Any]]:
    """REAL WANDS queries and DERIVED catalog queries with their users, and feeds."""
    workload = load_workload(root, n)
    real = wands_queries(data_dir())
    rng = random.Random(seed)
    out: list[dict[str, Any]] = []
    for i, (query, user, _) in enumerate(workload):
        if i % 5 == 4:
            out.append({"query": "", "user_id": user, "k": 10})
        elif i % 3 == 0 and real:
            out.append({"query": rng.choice(real), "user_id": user, "k": 10})
        else:
            out.append({"query": query, "user_id": user, "k": 10})
    return out


@dataclass
class Target:
    """A process the scenarios can kill and bring back on the same port."""

    name: str
    stage: str
    kill: Callable[[int], None]  # the signal
    restart: Callable[[], None]  # returns once it is SERVING again
    restarts: list[float] = field(default_factory=list)


def _rates(outcomes: Sequence[Outcome], stage: str) -> dict[str, Any]:
    n = len(outcomes)
    searches = [o for o in outcomes if not o.feed]
    return {
        "requests": n,
        "5xx_share": round(sum(o.status >= 500 or o.status == 0 for o in outcomes) / max(n, 1), 4),
        "search_5xx_share": round(
            sum(o.status >= 500 or o.status == 0 for o in searches) / max(len(searches), 1), 4
        ),
        "degraded_share": round(sum(stage in o.degraded for o in outcomes) / max(n, 1), 4),
    }


def kill_scenario(
    load: Load,
    target: Target,
    fault_seconds: float,
    recovery: Callable[[float], float | None],
    name: str = "",
) -> dict[str, Any]:
    """kill -9, keep the load on, restart; the fault window's rates and the recovery:
    ``recovery(t_serving)`` waits for the first sign of health after the restarted process
    is up and returns how long that took (None: not within its own time limit)."""
    time.sleep(1.0)
    t_kill = time.monotonic()
    target.kill(signal.SIGKILL)
    time.sleep(fault_seconds)
    t_restart = time.monotonic()
    target.restart()
    t_serving = time.monotonic()
    recovered = recovery(t_serving)
    # the fault window starts once the kill has been noticed (the in-flight calls at the
    # moment of the kill fail over to the degraded path in the same breath)
    return {
        "scenario": name or f"kill -9 {target.name}",
        **_rates(load.between(t_kill, t_restart), target.stage),
        "restart_to_serving_s": round(t_serving - t_restart, 2),
        "recovery_after_serving_s": None if recovered is None else round(recovered, 2),
        "recovered_within_target": recovered is not None and recovered <= RECOVERY_TARGET_S,
    }


def first_healthy_answer(
    load: Load, healthy: Callable[[Outcome], bool], limit: float = 30.0
) -> Callable[[float], float | None]:
    """Recovery = the first answer of the load that ``healthy`` accepts."""

    def wait(t_serving: float) -> float | None:
        end = t_serving + limit
        while time.monotonic() < end:
            after = [o for o in load.between(t_serving, time.monotonic()) if healthy(o)]
            if after:
                return min(o.done for o in after) - t_serving
            time.sleep(0.05)
        return None

    return wait


def sigterm_scenario(
    stack: Stack, requests: Sequence[dict[str, Any]], target: Target, burst: int = 12
) -> dict[str, Any]:
    """A burst of searches, SIGTERM mid-flight: how many of them failed."""
    results: list[tuple[int, tuple[str, ...]]] = []
    lock = threading.Lock()
    rng = random.Random(7)
    bodies = []
    for i in range(burst):
        body = dict(rng.choice([r for r in requests if r.get("query")]))
        body["query"] = f"{body['query']} drain {i} {time.monotonic_ns()}"
        # a generous budget: this measures the drain, not whether 12 concurrent searches
        # fit the default 200 ms on two cores
        body["timeout_ms"] = 2000
        bodies.append(body)

    def one(body: dict[str, Any]) -> None:
        status, reply = post_search(stack.base, body, timeout=10)
        degraded = tuple(reply.get("degraded", [])) if isinstance(reply, dict) else ()
        with lock:
            results.append((status, degraded))

    threads = [threading.Thread(target=one, args=(b,)) for b in bodies]
    for t in threads:
        t.start()
    time.sleep(0.03)  # the burst is queued in the services
    target.kill(signal.SIGTERM)
    for t in threads:
        t.join(timeout=15)
    target.restart()
    return {
        "scenario": f"SIGTERM {target.name} mid-burst",
        "in_flight": burst,
        "failed": sum(s != 200 for s, _ in results),
        "degraded": sum(bool(target.stage) and target.stage in d for _, d in results),
        "statuses": {str(k): v for k, v in sorted(Counter(s for s, _ in results).items())},
    }


def settle(stack: Stack, timeout: float = 20.0) -> None:
    """Wait until a search is answered whole again (breakers closed after a scenario)."""

    def whole() -> bool:
        status, body = post_search(stack.base, {"query": f"settle {time.monotonic_ns()}", "k": 5})
        return status == 200 and isinstance(body, dict) and not body.get("degraded")

    wait_for(whole, timeout, "a whole answer", interval=0.2)


def in_flight(metrics_port: int) -> float:
    """Calls the service is handling now (its ``gensearch_grpc_server_in_flight`` sum)."""
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    try:
        with urllib.request.urlopen(url, timeout=1) as reply:
            text = reply.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("gensearch_grpc_server_in_flight{")
    )


#: per service: a call that keeps the service busy for a while, built from the stack's data
DrainCall = Callable[[grpc.Channel, int], Any]


def drain_scenario(
    name: str,
    port: int,
    metrics_port: int,
    call: DrainCall,
    signal_it: Callable[[], None],
    calls: int = 6,
) -> dict[str, Any]:
    """Concurrent calls straight to the service; SIGTERM once its own in-flight gauge shows
    them all accepted; every one of them must complete OK (the graceful drain)."""
    results: list[str] = []
    lock = threading.Lock()

    # connected first: a call still setting up its connection is not in flight
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}") for _ in range(calls)]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=10)

    def one(i: int) -> None:
        try:
            call(channels[i], i)
            outcome = "OK"
        except grpc.RpcError as exc:
            outcome = exc.code().name if hasattr(exc, "code") else "ERROR"
        with lock:
            results.append(outcome)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(calls)]
    for t in threads:
        t.start()
    seen = 0.0
    end = time.monotonic() + 2
    while time.monotonic() < end and seen < calls:  # until the service handles them all
        seen = max(seen, in_flight(metrics_port))
        if seen < calls:
            time.sleep(0.001)
    signal_it()
    for t in threads:
        t.join(timeout=30)
    for channel in channels:
        channel.close()
    ok = sum(r == "OK" for r in results)
    return {
        "scenario": f"SIGTERM {name} with calls in flight",
        "in_flight": int(seen),
        "calls": calls,
        "failed": calls - ok,
        # the calls the service had accepted when it was told to stop must all complete
        "in_flight_failed": max(0, int(seen) - ok),
        "statuses": dict(Counter(results)),
    }


def _drain_calls(root: Path) -> dict[str, DrainCall]:
    """Per service, a call heavy enough to be caught in flight (derived queries)."""
    from services.common.generated.gensearch.common.v1 import common_pb2
    from services.common.generated.gensearch.query_understanding.v1 import (
        query_understanding_pb2 as qu_pb2,
    )
    from services.common.generated.gensearch.query_understanding.v1 import (
        query_understanding_pb2_grpc as qu_grpc,
    )
    from services.common.generated.gensearch.ranking.v1 import ranking_pb2, ranking_pb2_grpc
    from services.common.generated.gensearch.retrieval.v1 import (
        retrieval_pb2,
        retrieval_pb2_grpc,
    )

    workload = load_workload(root, 300)
    queries = [q for q, _, _ in workload if q]
    items = sorted({i for _, _, h in workload for i in h})[:400]

    def retrieve(channel: grpc.Channel, i: int) -> Any:
        request = retrieval_pb2.RetrieveRequest(query=queries[i], k=100, beam_width=64)
        return retrieval_pb2_grpc.RetrievalServiceStub(channel).Retrieve(request, timeout=20)

    def understand(channel: grpc.Channel, i: int) -> Any:
        # 32 queries: about 0.1-0.2 s, well inside the drain's grace period
        batch = [
            qu_pb2.UnderstandRequest(query=f"{q} {i}", want_embedding=True) for q in queries[:32]
        ]
        stub = qu_grpc.QueryUnderstandingServiceStub(channel)
        return stub.BatchUnderstand(qu_pb2.BatchUnderstandRequest(requests=batch), timeout=20)

    def rank(channel: grpc.Channel, i: int) -> Any:
        request = ranking_pb2.RankRequest(
            query=queries[i],
            candidates=[common_pb2.Candidate(item_id=x) for x in items],
        )
        return ranking_pb2_grpc.RankingServiceStub(channel).Rank(request, timeout=20)

    return {"retrieval": retrieve, "query_understanding": understand, "ranking": rank}


def _service_target(
    stack: ExitStack, root: Path, logs: Path, kind: ServiceKind, proc: ServiceProcess
) -> Target:
    state = {"proc": proc}

    def kill(sig: int) -> None:
        state["proc"].proc.send_signal(sig)
        state["proc"].proc.wait(timeout=20)

    def restart() -> None:
        old = state["proc"]
        n = len(target.restarts) + 1
        state["proc"] = start_service(
            stack,
            kind,
            root,
            logs,
            port=old.port,
            metrics_port=old.metrics_port,
            log_name=f"{kind.name}.restart{n}.log",
        )
        target.restarts.append(time.monotonic())

    target = Target(kind.name, kind.name, kill, restart)
    return target


def run(root: Path, fault_seconds: float, only: Sequence[str]) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    with TemporaryDirectory() as tmp, ExitStack() as stack:
        logs = Path(tmp)
        redis = RedisServer(logs)
        redis.start()
        stack.callback(redis.stop)
        s = start_stack(stack, root, logs, redis_url=redis.url)
        requests = request_mix(root)
        retrieval = ServiceProcess(
            "retrieval", s.retrieval_port, s.retrieval_metrics_port, s.retrieval_proc, logs
        )
        targets = {"retrieval": _service_target(stack, root, logs, RETRIEVAL, retrieval)}
        # restarts keep the ports
        ports = {"retrieval": (s.retrieval_port, s.retrieval_metrics_port)}
        for p in (s.query_understanding, s.ranking):
            if p is not None:
                ports[p.name] = (p.port, p.metrics_port)
        for kind, proc in ((QU, s.query_understanding), (RANKING, s.ranking)):
            if proc is not None:
                targets[kind.name] = _service_target(stack, root, logs, kind, proc)

        def redis_kill(sig: int) -> None:
            assert redis.proc is not None
            redis.proc.send_signal(sig)
            redis.proc.wait(timeout=10)

        def redis_restart() -> None:
            redis.start()  # same port, empty: the gateway materialises again
            targets["redis"].restarts.append(time.monotonic())

        targets["redis"] = Target("redis", "user_features", redis_kill, redis_restart)
        chosen = [t for t in targets.values() if not only or t.name in only]
        load = Load(s.base, requests)
        load.start()
        try:
            for target in chosen:
                settle(s)

                def healthy(o: Outcome, stage: str = target.stage) -> bool:
                    return o.status == 200 and stage not in o.degraded and not o.feed

                if target.name == "redis":
                    recovery = first_user_feature_hit(s)
                    name = "kill -9 redis (restarted empty)"
                else:
                    recovery, name = first_healthy_answer(load, healthy), ""
                rows.append(kill_scenario(load, target, fault_seconds, recovery, name))
        finally:
            load.stop()
        for target in chosen:
            if target.name != "redis":
                settle(s)
                rows.append(sigterm_scenario(s, requests, target))
        drain_calls = _drain_calls(root)
        for target in chosen:
            if target.name in ports:
                settle(s)
                port, metrics_port = ports[target.name]

                def stop_and_restart(t: Target = target) -> None:
                    t.kill(signal.SIGTERM)
                    t.restart()

                rows.append(
                    drain_scenario(
                        target.name,
                        port,
                        metrics_port,
                        drain_calls[target.name],
                        stop_and_restart,
                    )
                )
        settle(s)
        gateway_row = gateway_sigterm(s, requests)
        rows.append(gateway_row)
    return {
        "command": "python -m loadtest.faults"
        + (f" --only {' '.join(only)}" if only else "")
        + f" --fault-seconds {fault_seconds:g}",
        "machine": f"{platform.machine()}, 2 CPU cores, no GPU, CPython "
        f"{platform.python_version()}",
        "load": "3 client threads on loopback, searches (REAL WANDS and DERIVED queries, each "
        "made unique so the result cache never answers) and feeds (known users)",
        "rows": rows,
    }


def _user_feature_hits(stack: Stack) -> float:
    total = 0.0
    for line in stack.metrics_text().splitlines():
        is_hit = 'cache="user_features"' in line and 'outcome="hit"' in line
        if line.startswith("gensearch_gateway_cache_total") and is_hit:
            total += float(line.rsplit(" ", 1)[1])
    return total


def first_user_feature_hit(stack: Stack, limit: float = 60.0) -> Callable[[float], float | None]:
    """Recovery of an emptied Redis = the first user-feature hit after the gateway has
    materialised the version again."""

    def wait(t_up: float) -> float | None:
        hits = _user_feature_hits(stack)
        end = t_up + limit
        while time.monotonic() < end:
            if _user_feature_hits(stack) > hits:
                return time.monotonic() - t_up
            time.sleep(0.1)
        return None

    return wait


def gateway_sigterm(stack: Stack, requests: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """SIGTERM the gateway during a burst: uvicorn stops accepting and finishes what it has."""

    def wait_exit() -> None:
        stack.gateway_proc.wait(timeout=30)

    gw = Target("gateway", "", lambda sig: os.kill(stack.gateway_proc.pid, sig), wait_exit)
    row = sigterm_scenario(stack, requests, gw)
    row["exit_code"] = stack.gateway_proc.returncode
    return row


def markdown(doc: dict[str, Any]) -> str:
    kills = [r for r in doc["rows"] if r["scenario"].startswith("kill")]
    terms = [r for r in doc["rows"] if r["scenario"].endswith("mid-burst")]
    drains = [r for r in doc["rows"] if r["scenario"].endswith("in flight")]
    lines = [
        "# Fault tests under load",
        "",
        f"Command: `{doc['command']}`. Machine: {doc['machine']}. Load: {doc['load']}.",
        "",
        "| fault | requests in the fault | 5xx share | searches 5xx | degraded share "
        "| restart to SERVING s | recovery after SERVING s | within 5 s |",
        "|---|---|---|---|---|---|---|---|",
        *(
            f"| {r['scenario']} | {r['requests']} | {r['5xx_share']} | {r['search_5xx_share']} "
            f"| {r['degraded_share']} | {r['restart_to_serving_s']} "
            f"| {r['recovery_after_serving_s']} "
            f"| {'yes' if r['recovered_within_target'] else 'NO'} |"
            for r in kills
        ),
        "",
        "| graceful stop, through the gateway | requests in the burst | failed | degraded |",
        "|---|---|---|---|",
        *(
            f"| {r['scenario']} | {r['in_flight']} | {r['failed']} | {r['degraded']} |"
            for r in terms
        ),
        "",
        "A burst through the gateway mixes requests the stopped service had accepted with "
        "requests still on their way to it (those are refused: one instance cannot take "
        "them). The service-level drain below sends the calls straight to the service and "
        "stops it once its own in-flight gauge shows calls being handled:",
        "",
        "| graceful stop | calls | in flight at SIGTERM | failed | of those in flight |",
        "|---|---|---|---|---|",
        *(
            f"| {r['scenario']} | {r['calls']} | {r['in_flight']} | {r['failed']} "
            f"| {r['in_flight_failed']} |"
            for r in drains
        ),
    ]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    parser.add_argument("--fault-seconds", type=float, default=4.0)
    parser.add_argument(
        "--only", nargs="*", default=[], help="retrieval query_understanding ranking redis"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/results/faults"))
    args = parser.parse_args(argv)
    doc = run(args.artifacts, args.fault_seconds, args.only)
    text = markdown(doc)
    print(text)
    write_results(args.out, doc, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
