"""Every CPU graph variant tried for faithful, batch-invariant int8 (issue 8), measured in one run.

Built here from the source model exactly as the export builds them (Optimum ONNX -> O2), each given the pooled
output, and run through the production :class:`Engine` on the CPU provider with one intra-op thread:

* ``fp32``: the O2 graph (the reference point for speed; exact);
* ``dynamic``: dynamic int8 (per-channel weights, one activation scale per padded batch): the old default;
* ``static``: static int8 (QDQ), activation scales calibrated on the probe corpus (invariant by construction);
* ``per-token``: per-token activation scales, symmetric everywhere;
* ``per-token+asym``: GELU-fed MatMuls quantized with their row's min/max;
* ``per-token+smooth``: SmoothQuant (alpha 0.5) before per-token quantization;
* ``per-token+smooth+asym``: both, every MatMul in int8;
* ``per-token+smooth+asym+keep``: both, with the MatMuls the export kept in float (``--keep``; default: the
  export's sensitivity choice, read from ``--artifact``'s manifest).

Quality against ``SentenceTransformer.encode`` (fp32) on the probe corpus (where choices are made) and on the
verification corpus (never used for choosing): cosine min / p1 / mean, top-10 neighbour overlap, pair-similarity
Spearman, and batch invariance (one text alone vs in sorted batches vs in random batches of 16). Speed: texts/s in
calls of 32 texts, short and mixed, all variants interleaved, best of three rounds.

Results: ``benchmarks/results/bench_int8.json``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import DEFAULT_ARTIFACT, write_results

NAME = "bench_int8"


def _static(optimized: Path, target: Path, feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(feeds)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.items, None)

    quantize_static(
        str(optimized),
        str(target),
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
    )
    return {"method": "static (QDQ, MinMax calibration on the probe corpus)", "calibration_texts": len(feeds)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--artifact", type=Path, default=DEFAULT_ARTIFACT, help="an export (its manifest's kept set)")
    parser.add_argument("--model", default=None, help="the source model (default: packaged all-MiniLM-L6-v2)")
    parser.add_argument("--keep", default=None, help="comma-separated MatMul names kept in float (overrides)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timed seconds per variant, workload and round")
    parser.add_argument("--static-texts", type=int, default=200, help="calibration texts for the static variant")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import onnx

    from export import cpu_graph, onnx_export, optimize, per_token, pooling_graph, quantize, source
    from export.parity import VERIFY_CORPUS, ProbeCorpus
    from export.pipeline import reference_vectors

    manifest = json.loads((args.artifact / "manifest.json").read_text())
    if args.keep is not None:
        keep = [k for k in args.keep.split(",") if k]
    else:
        keep = list(manifest["artifacts"]["cpu"].get("quantization", {}).get("kept_float", []))

    work = Path(tempfile.mkdtemp(prefix="bench-int8-"))
    try:
        src = source.resolve_source(args.model)
        st_model = source.load_sentence_transformer(src)
        pipeline = source.describe_pipeline(st_model, src)
        onnx_export.export_onnx(pipeline.transformer_dir, work / "onnx")
        optimized = optimize.optimize(work / "onnx", work / "optimized", "O2")
        art = work / "artifact"
        art.mkdir()
        shutil.copy(args.artifact / "tokenizer.json", art / "tokenizer.json")
        for extra in args.artifact.glob("*.npy"):
            shutil.copy(extra, art / extra.name)
        base = {k: manifest[k] for k in ("model", "tokenizer", "format_version") if k in manifest}

        corpora = {"probe": ProbeCorpus.load(), "verification": ProbeCorpus.load(VERIFY_CORPUS)}
        inputs = {name: (corpus, reference_vectors(st_model, corpus)) for name, corpus in corpora.items()}
        probe_texts = list(corpora["probe"].texts)
        feeds = list(cpu_graph._feeds_one_by_one(art, base, probe_texts))
        peaks = per_token.activation_absmax(optimized, feeds)
        one_sided = per_token.one_sided_inputs(onnx.load(str(optimized), load_external_data=False))
        preset = quantize.detect_preset()
        alpha = cpu_graph.SMOOTHING_ALPHA

        def pt(**kw: Any) -> Any:
            return lambda p: {"quantization": per_token.quantize_per_token(optimized, p, **kw)}

        builders = {
            "fp32": ("fp32", lambda p: (shutil.copyfile(optimized, p), {"quantization": None})[1]),
            "dynamic": ("int8", lambda p: {"quantization": quantize.quantize(optimized, p, preset)[1]}),
            "static": (
                "int8",
                lambda p: {"quantization": _static(optimized, p, feeds[: args.static_texts])},
            ),
            "per-token": ("int8", pt()),
            "per-token+asym": ("int8", pt(asymmetric=one_sided)),
            "per-token+smooth": ("int8", pt(smoothing=peaks, alpha=alpha)),
            "per-token+smooth+asym": ("int8", pt(smoothing=peaks, alpha=alpha, asymmetric=one_sided)),
        }
        if keep:
            builders["per-token+smooth+asym+keep"] = (
                "int8",
                pt(smoothing=peaks, alpha=alpha, asymmetric=one_sided, keep_float=keep),
            )
        candidates = []
        for name, (precision, make) in builders.items():
            path = art / f".candidate-{name}.onnx"
            settings = make(path)
            pooling_graph.add_pooled_output(path, pooling=pipeline.head.pooling, padding_side=pipeline.padding_side)
            candidates.append(cpu_graph.Candidate(name=name, path=path, precision=precision, settings=settings))
            print(f"built {name}", flush=True)

        results: dict[str, Any] = {}
        for corpus_name, (corpus, reference) in inputs.items():
            evaluator = cpu_graph.Evaluator(art, base, corpus, reference)
            for candidate in candidates:
                quality = evaluator.measure(candidate)
                results.setdefault(candidate.name, {})[corpus_name] = quality
                print(corpus_name, candidate.name, quality, flush=True)
        probe = cpu_graph.Evaluator(art, base, *inputs["probe"])
        speed_rounds = []
        for _ in range(3):
            probe.speeds(candidates, seconds=args.seconds)
            speed_rounds.append({c.name: dict(c.speed) for c in candidates})
        for candidate in candidates:
            short = max(r[candidate.name]["short"] for r in speed_rounds)
            mixed = max(r[candidate.name]["mixed"] for r in speed_rounds)
            results[candidate.name]["texts_per_s"] = {"short": short, "mixed": mixed}
        dyn = results["dynamic"]["texts_per_s"]
        fp = results["fp32"]["texts_per_s"]
        for name, r in results.items():
            s = r["texts_per_s"]
            r["vs_dynamic"] = {k: round(s[k] / dyn[k], 3) for k in ("short", "mixed")}
            r["vs_fp32"] = {k: round(s[k] / fp[k], 3) for k in ("short", "mixed")}
            r["settings"] = next(c.settings for c in candidates if c.name == name)
            print(f"{name:<28} {s['short']:7.1f} {s['mixed']:7.1f}  vs dynamic {r['vs_dynamic']}", flush=True)
        path = write_results(
            NAME,
            settings={
                "provider": "CPUExecutionProvider",
                "intra_op_threads": 1,
                "call_texts": 32,
                "seconds": args.seconds,
                "rounds": 3,
                "speed_corpus": "probe corpus: its shortest quarter ('short') and all of it ('mixed')",
                "kept_float": keep,
                "smoothing_alpha": alpha,
                "dynamic_preset": preset,
            },
            results=results,
            out=args.out,
        )
        print(f"results: {path}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
