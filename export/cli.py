"""Command line of the export stage.

    python -m export [--model ID_OR_DIR] [--name NAME] [--output DIR] ...   export + parity gate + register
    python -m export check (--artifact DIR | --tag NAME[:VERSION])           re-run the parity gate
    python -m export find --tag NAME[:VERSION]                               print a stored model's directory
    python -m export build [--name NAME] [--image all|gpu|cpu] [--threshold ...]   parity gate, then `bentoml build`

Exit codes: 0 success, 2 bad arguments, 3 parity failed, 4 model not supported, 5 not found, 1 other errors.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Any

EXIT_PARITY = 3
EXIT_UNSUPPORTED = 4
EXIT_NOT_FOUND = 5


def _thresholds(overrides: list[str] | None):
    from export.parity import ParityThresholds

    thresholds = ParityThresholds()
    for spec in overrides or []:
        thresholds = thresholds.with_override(spec)
    return thresholds


def _add_parity_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--threshold",
        action="append",
        metavar="PRECISION.METRIC=VALUE",
        help="override a parity threshold, e.g. int8.cosine_min=0.95 (repeatable; 'none' disables one)",
    )
    parser.add_argument("--corpus", type=Path, help="probe corpus JSON (default: export/probe_corpus.json)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m export", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")

    run = sub.add_parser("run", help="export a model (the default command)")
    _add_export_options(run)
    _add_parity_options(run)

    check = sub.add_parser("check", help="re-run the parity gate on an existing artifact")
    where = check.add_mutually_exclusive_group(required=True)
    where.add_argument("--artifact", type=Path, help="artifact directory")
    where.add_argument("--tag", help="BentoML model tag (name or name:version)")
    _add_parity_options(check)

    find = sub.add_parser("find", help="print the directory of a model in the BentoML store")
    find.add_argument("--tag", required=True, help="BentoML model tag (name or name:version)")

    build = sub.add_parser("build", help="export if needed, re-run the parity gate, then `bentoml build`")
    _add_export_options(build)
    _add_parity_options(build)
    build.add_argument(
        "--image",
        choices=("all", "gpu", "cpu"),
        default="all",
        help="which bento: gpu (onnxruntime-gpu with CUDA libraries), cpu (onnxruntime only), or all (default)",
    )
    return parser


def _add_export_options(run: argparse.ArgumentParser) -> None:
    from export.config import CPU_GRAPH_CHOICES, GPU_PRECISIONS, OPTIMIZATION_LEVELS, QUANTIZATION_PRESETS

    run.add_argument(
        "--model", help="hub id or local sentence-transformers directory (default: packaged all-MiniLM-L6-v2)"
    )
    run.add_argument("--revision", help="hub revision (branch, tag or commit)")
    run.add_argument("--name", help="BentoML model name (default: embedserve-<model>)")
    run.add_argument("--output", type=Path, help="artifact directory (default: build/artifacts/<name>)")
    run.add_argument("--optimization", default="O2", choices=OPTIMIZATION_LEVELS, help="graph optimization level")
    run.add_argument(
        "--gpu-precision", default="fp16", choices=GPU_PRECISIONS, help="GPU artifact: fp16 (O4, default) or fp32"
    )
    run.add_argument(
        "--cpu-graph",
        default="auto",
        choices=CPU_GRAPH_CHOICES,
        help="CPU graph: auto (fastest of per-token int8 / fp32 meeting --quality on this machine), per-token, fp32, "
        "or dynamic (fastest int8, but a vector depends on its batch mates)",
    )
    run.add_argument(
        "--quality",
        action="append",
        default=[],
        metavar="METRIC=VALUE",
        help="CPU graph quality target on the probe corpus, e.g. cosine_min=0.99 (repeatable; 'none' disables one)",
    )
    run.add_argument(
        "--verify-corpus",
        type=Path,
        help="verification corpus JSON, never used for choosing (default: export/verify_corpus.json)",
    )
    run.add_argument("--quantization", default="auto", choices=QUANTIZATION_PRESETS, help="dynamic int8 preset")
    run.add_argument("--per-tensor", action="store_true", help="per-tensor weight scales (measured unusable on MiniLM)")
    run.add_argument("--no-register", action="store_true", help="do not save into the BentoML model store")
    run.add_argument("--trust-remote-code", action="store_true", help="allow custom model code")


def _quality(specs: list[str]) -> Any:
    from export.cpu_graph import QualityTarget

    target = QualityTarget()
    for spec in specs:
        target = target.with_override(spec)
    return target


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["run", *argv]
    args = build_parser().parse_args(argv)
    if args.command is None:
        build_parser().print_help()
        return 2
    logging.basicConfig(
        level=os.environ.get("EMBEDSERVE_LOG_LEVEL", "WARNING"), format="%(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from embedserve.errors import ArtifactError, UnsupportedModelError
    from export import store
    from export.parity import ParityError

    try:
        if args.command == "find":
            path = store.lookup(args.tag)
            if path is None:
                print(f"no model {args.tag!r} in the BentoML store", file=sys.stderr)
                return EXIT_NOT_FOUND
            print(path)
            return 0
        thresholds = _thresholds(args.threshold)
        if args.command == "check":
            from export.pipeline import recheck

            directory = args.artifact or store.lookup(args.tag)
            if directory is None:
                print(f"no model {args.tag!r} in the BentoML store", file=sys.stderr)
                return EXIT_NOT_FOUND
            overrides = thresholds if args.threshold else None
            recheck(directory, thresholds=overrides, corpus_path=args.corpus)
            print(f"parity OK: {directory}")
            return 0
        from export.config import ExportConfig

        config = ExportConfig(
            model=args.model,
            revision=args.revision,
            name=args.name,
            output=args.output,
            optimization=args.optimization,
            gpu_precision=args.gpu_precision,
            quantization=args.quantization,
            per_channel=not args.per_tensor,
            cpu_graph=args.cpu_graph,
            quality=_quality(args.quality),
            thresholds=thresholds,
            register=not args.no_register,
            corpus=args.corpus,
            verify_corpus=args.verify_corpus,
            trust_remote_code=args.trust_remote_code,
        )
        if args.command == "build":
            from export.bento import build_bento

            images = ("gpu", "cpu") if args.image == "all" else (args.image,)
            build_bento(config, thresholds=thresholds if args.threshold else None, images=images)
            return 0
        from export.pipeline import export_model

        result = export_model(config)
        print(f"artifact: {result.artifact_dir}")
        if result.tag:
            print(f"bentoml model: {result.tag}")
        return 0
    except ParityError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.command == "build":
            print("refusing to build: the bento was not built", file=sys.stderr)
        elif args.command == "run":
            print("nothing was registered in the model store", file=sys.stderr)
        return EXIT_PARITY
    except UnsupportedModelError as exc:
        print(f"error: model not supported: {exc}", file=sys.stderr)
        return EXIT_UNSUPPORTED
    except (ArtifactError, FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
