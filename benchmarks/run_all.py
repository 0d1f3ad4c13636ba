"""Run every benchmark and regenerate the compatibility page (what ``make bench`` calls).

1. ``bench_embedder`` (full run): the library without HTTP, int8 / fp32-optimized / torch;
2. ``bench_http --start``: the service under load, started and stopped here;
3. ``compat_matrix``: ``docs/compatibility.md`` from the results.

Each step runs as ``python -m benchmarks.<script>`` from the repository root, so this file works with or without
``PYTHONPATH`` set; a failing step stops the run with its exit status.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


def run_step(module: str, args: list[str]) -> int:
    """Run ``python -m benchmarks.<module> <args>`` from the repository root.

    Returns:
        The step's exit status.
    """
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "BENTOML_DO_NOT_TRACK": "true",
    }
    command = [sys.executable, "-m", f"benchmarks.{module}", *args]
    print(f"\n=== {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    status = subprocess.run(command, cwd=REPO_ROOT, env=env, check=False).returncode
    print(f"=== {module}: exit {status} after {time.perf_counter() - started:.0f}s", flush=True)
    return status


def main(argv: list[str] | None = None) -> int:
    """Run the steps in order; returns the first non-zero exit status, else 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke-test every step (results marked quick)")
    parser.add_argument("--results-dir", type=Path, default=None, help="where results go (default benchmarks/results)")
    parser.add_argument("--doc", type=Path, default=None, help="the page to write (default docs/compatibility.md)")
    parser.add_argument("--skip-embedder", action="store_true", help="do not run bench_embedder")
    parser.add_argument("--skip-http", action="store_true", help="do not run bench_http")
    args = parser.parse_args(argv)

    quick = ["--quick"] if args.quick else []

    def out(name: str) -> list[str]:
        return ["--out", str(args.results_dir / f"{name}.json")] if args.results_dir else []

    steps: list[tuple[str, list[str]]] = []
    if not args.skip_embedder:
        steps.append(("bench_embedder", [*quick, *out("bench_embedder")]))
    if not args.skip_http:
        steps.append(("bench_http", ["--start", *quick, *out("bench_http")]))
    compat = ["--include-quick"] if args.quick else []
    if args.results_dir:
        compat += ["--results-dir", str(args.results_dir)]
    if args.doc:
        compat += ["--out", str(args.doc)]
    steps.append(("compat_matrix", compat))
    for module, step_args in steps:
        status = run_step(module, step_args)
        if status:
            return status
    return 0


if __name__ == "__main__":
    sys.exit(main())
