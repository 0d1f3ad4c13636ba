"""The service under load: requests/s, embeddings/s, latency and errors over HTTP, against the raw embedder loop.

A closed-loop load generator (asyncio + aiohttp, one pooled connection per concurrent client, pre-encoded request
bodies) runs in this process, separate from the server. For every concurrency x request size cell it warms up, then
measures for ``--duration`` seconds: requests/s, embeddings/s, latency p50/p90/p99, errors by status code and by
exception, the server's own queue / inference / tokenize times (medians of its response headers) and the scheduler's
job sizes (from ``/info``).

Two references, measured in the same run while the server is idle (never at the same time as the load):

* the generator's ceiling: ``GET /livez`` at the same concurrency, with the client's CPU time, so that one can see
  the generator is not what limits the embedding rate;
* the raw loop: the int8 :class:`~embedserve.Engine` in this process, with the server's runtime settings, on the
  same texts cut into the same requests, processed as the service does (rounds of ``--round-requests`` requests:
  tokenize per request, jobs of up to the batcher's job size, final normalisation per request). Serving overhead is
  reported as service embeddings/s / raw embeddings/s.

Use ``--url`` for a running server or ``--start`` to start ``bentoml serve`` on a free port (and stop it at the end).
Results go to ``benchmarks/results/bench_http.json`` and ``.png``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.common import (
    DEFAULT_ARTIFACT,
    REPO_ROOT,
    ForeignLoad,
    Workload,
    describe_machine,
    describe_versions,
    latency_summary,
    make_workloads,
    median,
    parse_list,
    pyplot,
    ratio,
    results_path,
    save_figure,
    write_results,
)

NAME = "bench_http"
DEFAULT_URL = "http://127.0.0.1:3000"
DEFAULT_MODEL_TAG = "embedserve-all-minilm-l6-v2:latest"
SERVER_HEADERS = {
    "queue_ms": "x-embedserve-queue-ms",
    "inference_ms": "x-embedserve-inference-ms",
    "tokenize_ms": "x-embedserve-tokenize-ms",
    "job_texts": "x-embedserve-batch-texts",
}
ROUTES = {"openai": "/v1/embeddings", "tei": "/embed"}


# -- the server -----------------------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port that was free a moment ago on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_get_json(url: str, timeout: float = 10.0) -> Any:
    """``GET url`` and parse the JSON body (blocking; for set-up, never during a measurement)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def is_ready(base_url: str, path: str = "/readyz") -> bool:
    """True when ``GET path`` answers 200."""
    try:
        with urllib.request.urlopen(f"{base_url}{path}", timeout=2) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


class Server:
    """``bentoml serve service:Embeddings`` as a child process in its own process group.

    Subclasses (peer servers, ``benchmarks/peers.py``) override :meth:`command`, :meth:`environment`, ``cwd``,
    ``ready_path`` and ``name``.

    Args:
        port: the port to serve on (127.0.0.1 only).
        model_tag: the BentoML model tag (``EMBEDSERVE_MODEL``).
        env: extra environment variables (``EMBEDSERVE_*`` settings).
    """

    name = "bentoml serve"
    ready_path = "/readyz"
    cwd: Path = REPO_ROOT

    def __init__(self, port: int, model_tag: str, env: dict[str, str] | None = None) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.model_tag = model_tag
        self.extra_env = dict(env or {})
        self.process: subprocess.Popen | None = None
        handle, name = tempfile.mkstemp(prefix="embedserve-bench-server-", suffix=".log")
        os.close(handle)
        self.log_path = Path(name)

    def start(self, timeout_s: float = 240.0) -> float:
        """Start the server and wait until ``GET ready_path`` answers 200.

        Returns:
            Seconds until ready.

        Raises:
            RuntimeError: the server exited or was not ready in time (the message ends with its log).
        """
        started = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                cwd=self.cwd,
                env=self.environment(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        while time.perf_counter() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if is_ready(self.url, self.ready_path):
                return time.perf_counter() - started
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"{self.name} was not ready after {timeout_s:.0f}s:\n{self.log_tail()}")

    def command(self) -> list[str]:
        """The server's command line."""
        bentoml_exe = Path(sys.executable).with_name("bentoml")
        command = [str(bentoml_exe)] if bentoml_exe.exists() else [sys.executable, "-m", "bentoml"]
        return [*command, "serve", "service:Embeddings", "--host", "127.0.0.1", "--port", str(self.port)]

    def environment(self) -> dict[str, str]:
        """The server's environment: this process's, the model tag, offline switches, then ``env``."""
        return {
            **os.environ,
            "EMBEDSERVE_MODEL": self.model_tag,
            "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "BENTOML_DO_NOT_TRACK": "true",
            **self.extra_env,
        }

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cpu_seconds(self) -> float | None:
        """User + system CPU seconds of the server and its workers so far (``None`` without psutil)."""
        if self.process is None:
            return None
        try:
            import psutil
        except ImportError:
            return None
        try:
            root = psutil.Process(self.process.pid)
            total = 0.0
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.Error):
                    times = proc.cpu_times()
                    total += times.user + times.system
            return total
        except psutil.Error:
            return None

    def stop(self) -> None:
        """Stop the server's process group (SIGTERM, then SIGKILL after 20 s) and remove its log."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.log_path.unlink(missing_ok=True)


# -- the load generator ----------------------------------------------------------------------------------------


@dataclass
class Tally:
    """What one load cell observed (requests completed in the measurement window only)."""

    latencies_s: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    exceptions: Counter = field(default_factory=Counter)
    headers: dict[str, list[float]] = field(default_factory=lambda: {k: [] for k in SERVER_HEADERS})
    embeddings: int = 0
    validated: str | None = None


def request_texts(workload: Workload, size: int, count: int) -> list[list[str]]:
    """The texts of ``count`` consecutive requests of ``size`` texts each (request k starts at text k x size)."""
    return [workload.take(size, k * size) for k in range(count)]


def encode_body(texts: Sequence[str], route: str, model: str) -> bytes:
    """The JSON body of one request on ``route`` (``openai`` or ``tei``)."""
    body = {"input": list(texts), "model": model} if route == "openai" else {"inputs": list(texts)}
    return json.dumps(body).encode()


def check_response(payload: bytes, route: str, n_texts: int, dimension: int) -> str | None:
    """``None`` if the body holds ``n_texts`` vectors of ``dimension`` floats, else what is wrong."""
    try:
        data = json.loads(payload)
        vectors = [row["embedding"] for row in data["data"]] if route == "openai" else data
    except (ValueError, KeyError, TypeError) as exc:
        return f"unexpected body: {exc!r}"
    if len(vectors) != n_texts:
        return f"{len(vectors)} vectors for {n_texts} texts"
    if any(len(v) != dimension for v in vectors):
        return f"vectors are not {dimension}-dimensional"
    return None


async def closed_loop(
    url: str,
    *,
    bodies: Sequence[bytes] | None,
    texts_per_request: int,
    concurrency: int,
    warmup_s: float,
    duration_s: float,
    check: Any = None,
    server: Server | None = None,
) -> dict[str, Any]:
    """``concurrency`` clients, each sending its next request as soon as the previous one is answered.

    Requests that complete inside the measurement window (``warmup_s`` after the start, ``duration_s`` long) are
    counted: rates are completions / ``duration_s``, and latencies are theirs. After the window no new request is
    sent; those in flight are waited for (so that the next cell starts on an idle server) but not counted.

    Args:
        url: the full URL (POST with ``bodies``; GET without).
        bodies: pre-encoded request bodies, used round-robin; ``None`` for GET.
        texts_per_request: embeddings per successful request.
        concurrency: concurrent clients (and pooled connections).
        warmup_s: seconds of load before measuring.
        duration_s: seconds of measurement.
        check: ``check(payload) -> str | None`` run on the first successful response (``None`` = ok).
        server: the started server, to report its CPU time over the window.

    Returns:
        Rates, latency percentiles, errors, client (and server) CPU, server-header medians.
    """
    tally = Tally()
    clock = time.perf_counter
    counter = itertools.count()
    connector = aiohttp.TCPConnector(limit=concurrency, limit_per_host=concurrency, force_close=False)
    timeout = aiohttp.ClientTimeout(total=300)
    headers = {"content-type": "application/json"}
    window: dict[str, float | None] = {}

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        began = clock()
        measure_from = began + warmup_s
        stop_at = measure_from + duration_s

        async def client() -> None:
            while clock() < stop_at:
                k = next(counter)
                t0 = clock()
                try:
                    if bodies is None:
                        request = session.get(url)
                    else:
                        request = session.post(url, data=bodies[k % len(bodies)], headers=headers)
                    async with request as resp:
                        payload = await resp.read()
                        status = resp.status
                        values = [resp.headers.get(name) for name in SERVER_HEADERS.values()]
                except Exception as exc:  # counted, never fatal: errors are a result
                    if measure_from <= clock() <= stop_at:
                        tally.exceptions[type(exc).__name__] += 1
                    continue
                t1 = clock()
                if not measure_from <= t1 <= stop_at:
                    continue
                tally.latencies_s.append(t1 - t0)
                tally.statuses[status] += 1
                if status == 200:
                    tally.embeddings += texts_per_request
                    for key, value in zip(SERVER_HEADERS, values, strict=True):
                        if value is not None:
                            tally.headers[key].append(float(value))
                    if check is not None and tally.validated is None:
                        tally.validated = check(payload) or "ok"

        others = ForeignLoad(server.cpu_seconds if server else None)

        async def sample(at: float, suffix: str) -> None:
            await asyncio.sleep(max(0.0, at - clock()))
            window[f"wall{suffix}"] = clock()
            window[f"cpu{suffix}"] = time.process_time()
            window[f"server_cpu{suffix}"] = server.cpu_seconds() if server else None
            if suffix == "0":
                others.start()
            else:
                window["others"] = others.stop()

        await asyncio.gather(sample(measure_from, "0"), sample(stop_at, "1"), *(client() for _ in range(concurrency)))
        drained = clock() - stop_at

    window_s = float(window["wall1"] or 0.0) - float(window["wall0"] or 0.0)
    client_cpu = float(window["cpu1"] or 0.0) - float(window["cpu0"] or 0.0)
    server_cpu = (
        window["server_cpu1"] - window["server_cpu0"]
        if window.get("server_cpu0") is not None and window.get("server_cpu1") is not None
        else None
    )
    completed = len(tally.latencies_s)
    ok = tally.statuses.get(200, 0)
    return {
        "concurrency": concurrency,
        "texts_per_request": texts_per_request,
        "measured_s": round(duration_s, 3),
        "drain_s": round(drained, 3),
        "requests": completed,
        "requests_per_s": round(ok / duration_s, 2),
        "embeddings_per_s": round(tally.embeddings / duration_s, 2),
        "latency": latency_summary(tally.latencies_s),
        "status_codes": {str(k): v for k, v in sorted(tally.statuses.items())},
        "exceptions": dict(tally.exceptions),
        "errors": completed - ok + sum(tally.exceptions.values()),
        "client_cpu_s": round(client_cpu, 3),
        "client_cpu_share_of_one_core": round(client_cpu / window_s, 3) if window_s > 0 else None,
        "server_cpu_s": round(server_cpu, 3) if server_cpu is not None else None,
        "server_cpu_cores_busy": round(server_cpu / window_s, 3) if server_cpu is not None and window_s > 0 else None,
        "other_processes_cores": window.get("others"),
        "server_headers_median": {
            key: round(median(values), 3) if values else None for key, values in tally.headers.items()
        },
        "validated": tally.validated,
    }


# -- the raw loop -----------------------------------------------------------------------------------------------


def service_job_items(info: dict[str, Any]) -> int:
    """The scheduler's job size, as the service reports it in ``/info``."""
    return int(info["scheduler"]["max_job_texts"])


def raw_loop(
    embedder: Any,
    requests: Sequence[Sequence[str]],
    *,
    round_requests: int,
    job_items: int,
    seconds: float,
) -> dict[str, Any]:
    """The engine in-process, on the same texts cut into the service's jobs: for each round of
    ``round_requests`` requests, whole requests grouped into jobs of at most ``job_items`` texts, each job one
    :meth:`~embedserve.Engine.run` call. No HTTP, no JSON, no event loop.

    Returns:
        Embeddings/s and requests/s over whole rounds, and round latency.
    """

    def one_round(batch: Sequence[Sequence[str]]) -> int:
        jobs: list[list[str]] = []
        for texts in batch:
            if jobs and len(jobs[-1]) + len(texts) <= job_items:
                jobs[-1].extend(texts)
            else:
                jobs.append(list(texts))
        for job in jobs:
            embedder.run(job)
        return sum(len(texts) for texts in batch)

    rounds = [
        [requests[(r * round_requests + i) % len(requests)] for i in range(round_requests)]
        for r in range(max(1, len(requests) // round_requests))
    ]
    one_round(rounds[0][: max(1, round_requests // 8)])  # warm-up: an eighth of a round
    others = ForeignLoad()
    others.start()
    latencies, texts = [], 0
    started = time.perf_counter()
    for r in itertools.count():
        t0 = time.perf_counter()
        texts += one_round(rounds[r % len(rounds)])
        latencies.append(time.perf_counter() - t0)
        if time.perf_counter() - started >= seconds:
            break
    elapsed = time.perf_counter() - started
    return {
        "rounds": len(latencies),
        "round_requests": round_requests,
        "texts_per_request": len(rounds[0][0]),
        "job_items": job_items,
        "embeddings_per_s": round(texts / elapsed, 2),
        "requests_per_s": round(len(latencies) * round_requests / elapsed, 2),
        "round_latency": latency_summary(latencies),
        "other_processes_cores": others.stop(),
    }


def open_raw_embedder(artifact_dir: Path, runtime: dict[str, Any]) -> Any:
    """An :class:`~embedserve.Engine` with the server's runtime settings (as ``/info`` reports them)."""
    from embedserve import Engine, RuntimeConfig

    config = RuntimeConfig(
        artifact=runtime.get("artifact_role", "cpu"),
        providers=tuple(runtime.get("providers", {}).get("active") or ("CPUExecutionProvider",)),
        intra_op_threads=int(runtime["intra_op_threads"]),
        inter_op_threads=int(runtime.get("inter_op_threads", 1)),
        max_batch_size=int(runtime["max_batch_size"]),
        max_batch_tokens=int(runtime["max_batch_tokens"]),
    )
    return Engine(artifact_dir, config)


def resolve_artifact(explicit: Path | None, model_tag: str) -> tuple[Path, str]:
    """The artifact the raw loop runs: ``--artifact``, else the served model's store directory, else the build dir."""
    if explicit is not None:
        return explicit, "--artifact"
    try:
        import bentoml

        return Path(bentoml.models.get(model_tag).path), f"bentoml model store ({model_tag})"
    except Exception:  # no store or no such model: the exported build directory
        return DEFAULT_ARTIFACT, "build directory"


# -- plot -------------------------------------------------------------------------------------------------------


def plot(results: dict[str, Any], path: Path, title: str) -> Path | None:
    """Embeddings/s vs concurrency (with the raw loop), latency percentiles, and the generator's ceiling."""
    plt = pyplot()

    cells = results["cells"]
    if not cells:
        return None
    sizes = sorted({c["texts_per_request"] for c in cells})
    fig, (rate_ax, lat_ax, gen_ax) = plt.subplots(1, 3, figsize=(16, 4.6))
    for i, size in enumerate(sizes):
        rows = sorted((c for c in cells if c["texts_per_request"] == size), key=lambda c: c["concurrency"])
        xs = [c["concurrency"] for c in rows]
        color = f"C{i}"
        rate_ax.plot(xs, [c["embeddings_per_s"] for c in rows], "o-", color=color, label=f"HTTP, {size} text(s)/req")
        raw = results["raw_loop"].get(str(size))
        if raw:
            rate_ax.axhline(raw["embeddings_per_s"], color=color, linestyle="--", label=f"raw loop, {size}/req")
        lat_ax.plot(xs, [c["latency"]["p50_ms"] for c in rows], "o-", color=color, label=f"p50, {size}/req")
        lat_ax.plot(xs, [c["latency"]["p99_ms"] for c in rows], "s:", color=color, label=f"p99, {size}/req")
    for ax in (rate_ax, lat_ax):
        ax.set_xscale("log", base=2)
        ax.set_xticks(
            sorted({c["concurrency"] for c in cells}), [str(c) for c in sorted({c["concurrency"] for c in cells})]
        )
        ax.set_xlabel("concurrent clients")
        ax.legend(fontsize=7)
    rate_ax.set_ylabel("embeddings/s")
    rate_ax.set_title("throughput (dashed: raw embedder loop)")
    lat_ax.set_yscale("log")
    lat_ax.set_ylabel("request latency (ms)")
    lat_ax.set_title("latency")
    concurrencies = sorted({c["concurrency"] for c in cells})
    width = 0.8 / (len(sizes) + 1)
    livez = [results["generator_ceiling"].get(str(c), {}).get("requests_per_s", 0.0) for c in concurrencies]
    bars = gen_ax.bar([j - width * len(sizes) / 2 for j in range(len(concurrencies))], livez, width, label="GET /livez")
    gen_ax.bar_label(bars, fmt="%.0f", fontsize=7)
    for i, size in enumerate(sizes):
        values = [
            next((c["requests_per_s"] for c in cells if c["concurrency"] == k and c["texts_per_request"] == size), 0.0)
            for k in concurrencies
        ]
        bars = gen_ax.bar(
            [j + width * (i + 1 - len(sizes) / 2) for j in range(len(concurrencies))],
            values,
            width,
            label=f"{size}/req",
        )
        gen_ax.bar_label(bars, fmt="%.0f", fontsize=7)
    gen_ax.set_xticks(range(len(concurrencies)), [str(c) for c in concurrencies])
    gen_ax.set_xlabel("concurrent clients")
    gen_ax.set_ylabel("requests/s")
    gen_ax.set_yscale("log")
    gen_ax.set_title("load generator ceiling vs embedding requests")
    gen_ax.legend(fontsize=7)
    return save_figure(plt, fig, title, path)


# -- main -------------------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--url", default=None, help=f"a running server (default {DEFAULT_URL})")
    target.add_argument("--start", action="store_true", help="start `bentoml serve` on a free port, stop it at the end")
    parser.add_argument("--model-tag", default=os.environ.get("EMBEDSERVE_MODEL", DEFAULT_MODEL_TAG))
    parser.add_argument("--route", choices=sorted(ROUTES), default="openai", help="openai: /v1/embeddings; tei: /embed")
    parser.add_argument("--concurrency", default="1,8,64", help="comma list of concurrent clients")
    parser.add_argument("--request-sizes", default="1,16", help="comma list of texts per request")
    parser.add_argument("--duration", type=float, default=None, help="measured seconds per cell (default 12)")
    parser.add_argument("--warmup", type=float, default=None, help="warm-up seconds per cell (default 3)")
    parser.add_argument("--livez-duration", type=float, default=None, help="seconds per /livez cell (default 4)")
    parser.add_argument("--raw-seconds", type=float, default=None, help="seconds of the raw loop per size (default 8)")
    parser.add_argument(
        "--round-requests", type=int, default=None, help="requests per raw-loop round (default: the top concurrency)"
    )
    parser.add_argument(
        "--artifact", type=Path, default=None, help="artifact for the raw loop (default: the served one)"
    )
    parser.add_argument("--quick", action="store_true", help="smoke test: 2 s cells, 1 s warm-up, short raw loop")
    parser.add_argument("--seed", type=int, default=0, help="workload seed")
    parser.add_argument("--out", type=Path, default=None, help=f"results JSON (default benchmarks/results/{NAME}.json)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns the exit status."""
    args = build_parser().parse_args(argv)
    quick = args.quick
    duration = args.duration or (2.0 if quick else 12.0)
    warmup = args.warmup if args.warmup is not None else (1.0 if quick else 3.0)
    livez_duration = args.livez_duration or (1.0 if quick else 4.0)
    raw_seconds = args.raw_seconds or (2.0 if quick else 8.0)
    concurrencies = sorted(parse_list(args.concurrency, int))
    sizes = parse_list(args.request_sizes, int)
    round_requests = args.round_requests or max(concurrencies)
    out = results_path(NAME, args.out)

    def say(text: str) -> None:
        print(text, flush=True)

    started = time.perf_counter()
    server: Server | None = None
    ready_s = None
    if args.start:
        server = Server(free_port(), args.model_tag)
        say(f"starting bentoml serve on port {server.port} ...")
        try:
            ready_s = server.start()
        except BaseException:
            server.stop()
            raise
        base_url = server.url
        say(f"ready after {ready_s:.1f}s")
    else:
        base_url = (args.url or DEFAULT_URL).rstrip("/")
        if not is_ready(base_url):
            raise SystemExit(f"{base_url}/readyz does not answer 200: start the server or use --start")
    try:
        machine = describe_machine()
        info = http_get_json(f"{base_url}/info")
        route = ROUTES[args.route]
        model_id = info["model_id"]
        dimension = int(info["dimension"])
        workload = make_workloads(args.artifact or DEFAULT_ARTIFACT, ["mixed"], size=1024, seed=args.seed)["mixed"]
        # Every size covers the whole workload at least once (same length mix), and at least two raw-loop rounds.
        n_requests = {size: max(round_requests * 2, -(-len(workload.texts) // size)) for size in sizes}
        requests_by_size = {size: request_texts(workload, size, n_requests[size]) for size in sizes}
        bodies_by_size = {
            size: [encode_body(texts, args.route, model_id) for texts in reqs]
            for size, reqs in requests_by_size.items()
        }
        say(f"workload mixed: {workload.summary()}")

        # The raw loop runs in this process, right after each request size's cells (the server idle by then), so
        # that the service/raw ratio compares measurements taken minutes apart at most on a noisy machine.
        artifact_dir, artifact_source = resolve_artifact(args.artifact, args.model_tag)
        embedder = open_raw_embedder(artifact_dir, info["runtime"])
        job_items = service_job_items(info)
        raw: dict[str, Any] = {}
        cells = []
        for size in sizes:
            for concurrency in concurrencies:
                before = http_get_json(f"{base_url}/info")["scheduler"]
                cell = asyncio.run(
                    closed_loop(
                        base_url + route,
                        bodies=bodies_by_size[size],
                        texts_per_request=size,
                        concurrency=concurrency,
                        warmup_s=warmup,
                        duration_s=duration,
                        check=lambda payload, n=size: check_response(payload, args.route, n, dimension),
                        server=server,
                    )
                )
                after = http_get_json(f"{base_url}/info")["scheduler"]
                jobs = after["jobs"] - before["jobs"]
                cell["scheduler_delta_with_warmup"] = {
                    "jobs": jobs,
                    "texts_per_job": round((after["texts"] - before["texts"]) / jobs, 2) if jobs else None,
                    "requests_per_job": round((after["requests"] - before["requests"]) / jobs, 2) if jobs else None,
                    "failed_jobs": after["failed_jobs"] - before["failed_jobs"],
                }
                cell["mean_tokens_per_text"] = round(workload.mean_tokens(n_requests[size] * size), 2)
                cells.append(cell)
                lat = cell["latency"]
                say(
                    f"c={concurrency:<3d} {size:>2d} text(s)/req: {cell['requests_per_s']:8.1f} req/s "
                    f"{cell['embeddings_per_s']:8.1f} emb/s  p50 {lat['p50_ms']} p90 {lat['p90_ms']} "
                    f"p99 {lat['p99_ms']} ms  errors {cell['errors']} {cell['status_codes']}  "
                    f"client cpu {cell['client_cpu_share_of_one_core']}  server {cell['server_headers_median']}  "
                    f"valid {cell['validated']}  other processes {cell['other_processes_cores']} cores"
                )
            raw[str(size)] = raw_loop(
                embedder,
                requests_by_size[size],
                round_requests=round_requests,
                job_items=job_items,
                seconds=raw_seconds,
            )
            say(
                f"raw loop    {size:>2d} text(s)/req: {raw[str(size)]['embeddings_per_s']:8.1f} emb/s (in-process)  "
                f"other processes {raw[str(size)]['other_processes_cores']} cores"
            )

        ceiling = {}
        for concurrency in concurrencies:
            cell = asyncio.run(
                closed_loop(
                    base_url + "/livez",
                    bodies=None,
                    texts_per_request=0,
                    concurrency=concurrency,
                    warmup_s=min(warmup, 0.5),
                    duration_s=livez_duration,
                    server=server,
                )
            )
            ceiling[str(concurrency)] = {
                k: cell[k]
                for k in (
                    "requests_per_s",
                    "latency",
                    "errors",
                    "status_codes",
                    "client_cpu_s",
                    "client_cpu_share_of_one_core",
                    "server_cpu_cores_busy",
                )
            }
            say(
                f"generator ceiling c={concurrency:<3d} GET /livez {cell['requests_per_s']:9.1f} req/s  "
                f"client cpu {cell['client_cpu_share_of_one_core']}"
            )

        raw_runtime = embedder.describe()
        del embedder

        top = max(concurrencies)
        overhead = {}
        for size in sizes:
            cell = next(c for c in cells if c["concurrency"] == top and c["texts_per_request"] == size)
            overhead[str(size)] = {
                "concurrency": top,
                "service_embeddings_per_s": cell["embeddings_per_s"],
                "raw_embeddings_per_s": raw[str(size)]["embeddings_per_s"],
                "service_over_raw": ratio(cell["embeddings_per_s"], raw[str(size)]["embeddings_per_s"]),
                "service_requests_per_s": cell["requests_per_s"],
                "generator_ceiling_requests_per_s": ceiling[str(top)]["requests_per_s"],
                "ceiling_over_service_requests": ratio(ceiling[str(top)]["requests_per_s"], cell["requests_per_s"]),
                "client_cpu_share_of_one_core": cell["client_cpu_share_of_one_core"],
            }
            say(
                f"serving overhead, c={top} {size} text(s)/req: service/raw = {overhead[str(size)]['service_over_raw']}"
                f"  (generator ceiling {ceiling[str(top)]['requests_per_s']} req/s vs {cell['requests_per_s']} req/s)"
            )
    finally:
        if server is not None:
            server.stop()

    settings = {
        "url": "started by --start" if args.start else base_url,
        "server_ready_s": round(ready_s, 1) if ready_s is not None else None,
        "model_tag": args.model_tag,
        "route": route,
        "concurrency": concurrencies,
        "request_sizes": sizes,
        "duration_s": duration,
        "warmup_s": warmup,
        "livez_duration_s": livez_duration,
        "raw_seconds": raw_seconds,
        "round_requests": round_requests,
        "distinct_requests_per_size": {str(k): v for k, v in n_requests.items()},
        "quick": quick,
        "seed": args.seed,
        "workload": workload.summary(),
        "other_processes_cores": (
            "cores kept busy by processes other than this client"
            + (" and the server it started" if args.start else " (the server's own CPU included when it is local)")
        ),
        "load_generator": f"asyncio + aiohttp {aiohttp.__version__}, closed loop, one process, pre-encoded bodies",
        "server_info": {k: info.get(k) for k in ("model_id", "bento_model", "dimension", "limits", "runtime")},
        "server_versions": info.get("versions"),
        "raw_loop": {"artifact": str(artifact_dir), "artifact_source": artifact_source, "runtime": raw_runtime},
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    results = {"cells": cells, "generator_ceiling": ceiling, "raw_loop": raw, "serving_overhead": overhead}
    path = write_results(
        NAME, settings=settings, results=results, out=out, machine=machine, versions=describe_versions()
    )
    title = (
        f"{model_id} over HTTP ({route}) on {machine['cpu_model']} ({machine['cores']} cores), "
        "load generator on the same machine"
    )
    png = plot(results, path.with_suffix(".png"), title)
    say(f"wrote {path}" + (f" and {png}" if png else "") + f" in {settings['elapsed_s']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
