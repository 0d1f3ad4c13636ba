"""Step 8 (``make build``): the parity gate on the stored model, then ``bentoml build`` pinned to that model.

The bento is built only after the exact model version it bundles passed the gate again (with the thresholds
recorded at export, or stricter ones given on the command line).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import TextIO

from export import store
from export.config import ExportConfig
from export.parity import ParityThresholds
from export.pipeline import export_model, recheck

ROOT = Path(__file__).resolve().parent.parent


#: The images: the bentofile of each (the bento's name is in it). The GPU one carries onnxruntime-gpu and the CUDA
#: libraries from PyPI (it also runs on a CPU host); the CPU one carries onnxruntime only.
IMAGES = {"gpu": "bentofile.yaml", "cpu": "bentofile.cpu.yaml"}


def build_bento(
    config: ExportConfig,
    *,
    thresholds: ParityThresholds | None = None,
    images: tuple[str, ...] = tuple(IMAGES),
    project_dir: Path = ROOT,
    stream: TextIO | None = None,
) -> dict[str, str]:
    """Export ``config.model_name`` if the store lacks it, re-check parity once, then ``bentoml build`` each of
    ``images`` with that exact model version.

    Returns:
        The bento tag of each image.

    Raises:
        ParityError: the stored model fails the gate; no bento is built.
        RuntimeError: ``bentoml build`` failed (its output is in the message).
    """
    stream = stream or sys.stdout
    name = config.model_name
    path = store.lookup(f"{name}:latest")
    if path is None:
        print(f"model {name} is not in the BentoML store: exporting it first", file=stream, flush=True)
        export_model(config, stream=stream)
        path = store.lookup(f"{name}:latest")
        assert path is not None
    import bentoml

    tag = str(bentoml.models.get(f"{name}:latest").tag)
    print(f"parity gate on {tag} ({path})", file=stream, flush=True)
    recheck(path, thresholds=thresholds, stream=stream)
    env = {**os.environ, "EMBEDSERVE_MODEL": tag}
    built = {}
    for image in images:
        bentofile = project_dir / IMAGES[image]
        command = [str(Path(sys.executable).parent / "bentoml"), "build", "-f", str(bentofile), str(project_dir)]
        result = subprocess.run([*command, "--output", "tag"], cwd=project_dir, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"bentoml build failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        match = re.search(r"__tag__:(\S+)", result.stdout) or re.search(r"(embedserve[\w-]*:\w+)", result.stdout)
        bento = match.group(1) if match else result.stdout.strip().splitlines()[-1]
        print(f"bento: {bento} ({image} image, model {tag})", file=stream, flush=True)
        print(f"containerize with: bentoml containerize {bento}", file=stream, flush=True)
        built[image] = bento
    return built
