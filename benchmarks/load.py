"""HTTP load with wrk: pre-encoded JSON bodies sent round-robin, status codes counted in Lua, latency percentiles from
wrk's own histogram, and wrk's CPU time from the kernel.

wrk (https://github.com/wg/wrk, Debian package ``wrk``; ``benchmarks/peers/install_wrk.sh``) is an event loop in C:
one thread keeps dozens of keep-alive connections busy for a small fraction of the CPU an asyncio client needs, which
matters when the client and the server share two cores. wrk is closed-loop (each connection sends its next request
when the previous answer arrives), counts the responses completed within ``--duration``, and abandons the requests
still in flight at the end: run :func:`check_embeddings` after a run, which waits behind them, before measuring the
next thing.

Correctness is checked outside the timed run (:func:`check_embeddings`, with httpx); the Lua script only counts
status codes and never parses a body.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from benchmarks.bench_http import check_response

#: wrk's Lua script. ``args``: bodies file (one JSON body per line), request path, wrk threads, then header lines.
#: ``request()`` is called per thread (wrk has no per-connection hook): a thread-wide counter walks the bodies, so
#: consecutive requests, and therefore concurrent connections, carry different bodies; thread ``i`` starts at
#: offset ``i * n / threads``.
ROTATE_LUA = r"""
local threads = {}
local next_id = 0

function setup(thread)
   thread:set("id", next_id)
   next_id = next_id + 1
   table.insert(threads, thread)
end

function init(args)
   local bodies_path, path, nthreads = args[1], args[2], tonumber(args[3])
   local headers = {}
   for i = 4, #args do
      local name, value = args[i]:match("^([^:]+):%s*(.*)$")
      headers[name] = value
   end
   requests = {}
   for line in io.lines(bodies_path) do
      requests[#requests + 1] = wrk.format("POST", path, headers, line)
   end
   n = #requests
   k = math.floor(id * n / nthreads)
   statuses = {}
end

function request()
   local r = requests[k + 1]
   k = (k + 1) % n
   return r
end

function response(status, headers, body)
   statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
   local counts = {}
   for _, thread in ipairs(threads) do
      for code, c in pairs(thread:get("statuses")) do
         counts[code] = (counts[code] or 0) + c
      end
   end
   local parts = {}
   for code, c in pairs(counts) do
      parts[#parts + 1] = string.format('"%d": %d', code, c)
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"duration_us": %d, "requests": %d, "bytes": %d, "statuses": {%s}, ' ..
      '"socket_errors": {"connect": %d, "read": %d, "write": %d, "timeout": %d}, ' ..
      '"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, ' ..
      '"p50": %d, "p90": %d, "p99": %d, "p99.9": %d}}\n',
      summary.duration, summary.requests, summary.bytes, table.concat(parts, ", "),
      e.connect, e.read, e.write, e.timeout,
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99), latency:percentile(99.9)))
end
"""

JSON_HEADERS = {"content-type": "application/json"}


def wrk_version(wrk: str = "wrk") -> str | None:
    """wrk's version line (``None`` when it is not installed)."""
    exe = shutil.which(wrk)
    if exe is None:
        return None
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout
    first = out.splitlines()[0] if out else ""
    return re.sub(r"\s+Copyright.*", "", first).strip() or None


def run_wrk(
    url: str,
    path: str,
    bodies: Sequence[bytes],
    *,
    connections: int,
    duration_s: float,
    threads: int = 1,
    headers: Mapping[str, str] = JSON_HEADERS,
    timeout_s: float = 60.0,
    wrk: str = "wrk",
) -> dict[str, Any]:
    """POST ``bodies`` round-robin to ``url + path`` with wrk for ``duration_s`` seconds and summarise.

    Args:
        url: the server's base URL (``http://127.0.0.1:3000``).
        path: the request path (``/v1/embeddings``).
        bodies: pre-encoded request bodies, one per request in turn (no newline inside one).
        connections: concurrent keep-alive connections (closed loop).
        duration_s: seconds of load (wrk takes whole seconds; rounded, at least 1).
        threads: wrk threads (event loops); 1 keeps the client's CPU small.
        headers: request headers.
        timeout_s: a response slower than this counts as a socket timeout (wrk's default, 2 s, is shorter than a
            16-text request's latency at 32 connections on 2 cores).
        wrk: the wrk executable.

    Returns:
        ``requests_per_s`` (2xx responses / measured seconds), ``responses_per_s`` (all statuses), latency
        percentiles in ms over all responses, ``status_codes``, ``errors`` (``non_2xx``, wrk's socket errors:
        ``connect``, ``read``, ``write``, ``timeout``, and ``total``), the client's CPU seconds (user + system, from
        the kernel's accounting of the wrk process) and its share of one core, and the tool's settings.

    Raises:
        RuntimeError: wrk is missing, failed, or printed no summary (the message holds its output).
    """
    exe = shutil.which(wrk)
    if exe is None:
        raise RuntimeError(f"{wrk} not found: run benchmarks/peers/install_wrk.sh (Debian: apt-get install -y wrk)")
    if not bodies or any(b"\n" in body for body in bodies):
        raise ValueError("bodies must be a non-empty list of single-line JSON documents")
    seconds = max(1, round(duration_s))
    with tempfile.TemporaryDirectory(prefix="embedserve-wrk-") as tmp:
        bodies_file = Path(tmp) / "bodies.jsonl"
        bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
        script = Path(tmp) / "rotate.lua"
        script.write_text(ROTATE_LUA)
        output = Path(tmp) / "wrk.out"
        command = [
            exe,
            f"--threads={threads}",
            f"--connections={connections}",
            f"--duration={seconds}s",
            f"--timeout={max(1, round(timeout_s))}s",
            f"--script={script}",
            url.rstrip("/") + path,
            "--",
            str(bodies_file),
            path,
            str(threads),
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        started = time.perf_counter()
        with open(output, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        watchdog = threading.Timer(seconds + timeout_s + 30, process.kill)
        watchdog.start()
        try:
            # wait4 gives this child's own CPU time (RUSAGE_CHILDREN would add every other child reaped meanwhile).
            _, wait_status, usage = os.wait4(process.pid, 0)
        finally:
            watchdog.cancel()
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(wait_status)
        text = output.read_text(errors="replace")
    line = next((ln for ln in text.splitlines() if ln.startswith("WRK_JSON ")), None)
    if process.returncode != 0 or line is None:
        raise RuntimeError(f"wrk exited with {process.returncode} without a summary:\n{text[-4000:]}")
    summary = json.loads(line.removeprefix("WRK_JSON "))
    measured = summary["duration_us"] / 1e6
    statuses = {str(k): v for k, v in sorted(summary["statuses"].items(), key=lambda kv: int(kv[0]))}
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    socket = summary["socket_errors"]
    non_2xx = summary["requests"] - ok
    cpu = usage.ru_utime + usage.ru_stime
    return {
        "measured_s": round(measured, 3),
        "requests": summary["requests"],
        "requests_per_s": round(ok / measured, 2),
        "responses_per_s": round(summary["requests"] / measured, 2),
        "latency_ms": {k: round(v / 1000.0, 3) for k, v in summary["latency_us"].items()},
        "status_codes": statuses,
        "errors": {"non_2xx": non_2xx, **socket, "total": non_2xx + sum(socket.values())},
        "client_cpu_s": round(cpu, 3),
        "client_cpu_share_of_one_core": round(cpu / wall, 3) if wall > 0 else None,
        "client": {"tool": wrk_version(exe), "threads": threads, "connections": connections, "timeout_s": timeout_s},
    }


def check_embeddings(
    url: str,
    path: str,
    bodies: Sequence[bytes],
    *,
    texts_per_body: int,
    dimension: int,
    sample: int = 4,
    timeout_s: float = 120.0,
) -> dict[str, Any]:
    """POST ``sample`` of ``bodies`` (spread over the list) one at a time with httpx and check every answer.

    An answer is right when it is a 200 whose OpenAI-shaped body (``data[i].embedding``) holds ``texts_per_body``
    vectors of ``dimension`` floats. Run it before and after a timed run: after one, the first answer also waits
    behind the requests wrk abandoned, so the server is idle again when it returns.

    Returns:
        ``checked``, ``ok`` and ``problems`` (one line per wrong answer).
    """
    import httpx

    picks = sorted({round(i * (len(bodies) - 1) / max(sample - 1, 1)) for i in range(sample)})
    problems = []
    with httpx.Client(base_url=url, timeout=timeout_s, headers=JSON_HEADERS) as client:
        for i in picks:
            resp = client.post(path, content=bodies[i])
            problem = (
                f"status {resp.status_code}: {resp.text[:200]}"
                if resp.status_code != 200
                else check_response(resp.content, "openai", texts_per_body, dimension)
            )
            if problem:
                problems.append(f"body {i}: {problem}")
    return {"checked": len(picks), "ok": len(picks) - len(problems), "problems": problems}
