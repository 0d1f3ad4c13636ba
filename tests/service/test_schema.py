"""The published API schema and the real routes agree: `/openapi.json` is generated from the models requests are
validated with, and schemathesis fuzzes a real `bentoml serve` from it (issue 9 item 3, issue 10 item 1).

Every schemathesis check runs (``tests/service/schemathesis.toml``): no 5xx for any generated request, every
status code, content type, response body and header as the schema documents, requests the schema allows are
served, requests it forbids are refused with a 4xx, unsupported methods get 405 with ``Allow``. The seed is fixed
so that a failure reproduces (``schemathesis`` prints a curl command for it); run the same command with another
seed to search further.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

pytestmark = [pytest.mark.service, pytest.mark.slow]

CONFIG = Path(__file__).with_name("schemathesis.toml")
SCHEMATHESIS = str(Path(sys.executable).parent / "schemathesis")
#: Examples per operation and phase; with 10 operations, coverage and fuzzing phases: over 1,000 requests.
MAX_EXAMPLES = 100
SEED = 20261127


def test_schema_is_openapi_31_and_states_the_servers_limits(url):
    schema = httpx.get(f"{url}/openapi.json", timeout=10).json()
    info = httpx.get(f"{url}/info", timeout=10).json()
    assert schema["openapi"] == "3.1.0"
    assert set(schema["paths"]) >= {"/v1/embeddings", "/embed", "/", "/similarity", "/tokenize", "/decode", "/info"}
    request = schema["components"]["schemas"]["CreateEmbeddingRequest"]
    texts = next(s for s in request["properties"]["input"]["oneOf"] if s.get("type") == "array")
    assert texts["maxItems"] == info["max_client_batch_size"] == 2048
    dimensions = next(s for s in request["properties"]["dimensions"]["anyOf"] if s.get("type") == "integer")
    assert dimensions["maximum"] == info["dimension"] == 384
    ids = schema["components"]["schemas"]["DecodeRequest"]["properties"]["ids"]["items"]
    assert ids["exclusiveMaximum"] == 30522  # MiniLM's vocabulary
    page = httpx.get(f"{url}/docs", timeout=10)
    assert page.status_code == 200 and "/openapi.json" in page.text
    for asset in re.findall(r'(?:src|href)="(/docs/[^"]+)"', page.text):
        assert httpx.get(f"{url}{asset}", timeout=10).status_code == 200, asset


def test_fuzzing_the_api_from_its_schema_finds_nothing(url, tmp_path):
    command = [
        SCHEMATHESIS,
        "--config-file",
        str(CONFIG),
        "--no-color",
        "run",
        f"{url}/openapi.json",
        "--max-examples",
        str(MAX_EXAMPLES),
        "--seed",
        str(SEED),
    ]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-8000:]
    generated = re.search(r"(\d+) generated", output)
    assert generated and int(generated.group(1)) >= 1000, output[-3000:]
