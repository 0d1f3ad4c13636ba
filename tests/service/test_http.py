"""The service over real HTTP: routes, both wire protocols, real client SDKs, bad input, concurrency."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest

pytestmark = [pytest.mark.service, pytest.mark.slow]

UNSEEN = [
    "Where can I recycle old laptop batteries?",
    "The central bank held interest rates at 4.25% for the third meeting in a row.",
    "Comment réinitialiser le mot de passe de mon routeur ?",
    "async def fetch(session, url):\n    async with session.get(url) as r:\n        return await r.text()",
    "🍕🍕 best slice in town, no cap",
    "Symptoms of vitamin D deficiency include fatigue and bone pain.",
]


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def post(url: str, path: str, body, **kwargs) -> httpx.Response:
    return httpx.post(f"{url}{path}", json=body, timeout=60, **kwargs)


@pytest.fixture(scope="module")
def manifest(minilm_artifact) -> dict:
    return json.loads((minilm_artifact / "manifest.json").read_text())


@pytest.fixture(scope="module")
def reference(st_minilm) -> np.ndarray:
    return st_minilm.encode(UNSEEN)


def test_health_routes(url):
    assert httpx.get(f"{url}/livez", timeout=10).status_code == 200
    assert httpx.get(f"{url}/readyz", timeout=10).status_code == 200
    health = httpx.get(f"{url}/health", timeout=10)  # TEI's (503 before the model is ready: test_edge.py)
    assert health.status_code == 200 and health.content == b""


def test_info_reports_model_limits_providers_and_parity(url, manifest):
    info = httpx.get(f"{url}/info", timeout=10).json()
    assert info["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["dimension"] == 384 and info["max_input_tokens"] == 256
    for limit in ("max_inputs", "max_chars", "max_body_bytes", "max_queue_texts", "max_batch_size", "max_batch_tokens"):
        assert isinstance(info["limits"][limit], int), limit
    providers = info["runtime"]["providers"]
    # onnxruntime-gpu is installed: CUDA is asked for, the CPU is what we get, and /info says so with the reason.
    assert "CUDAExecutionProvider" in providers["requested"]
    assert providers["active"] == ["CPUExecutionProvider"]
    assert providers["fell_back"] is True and providers["dropped"]["CUDAExecutionProvider"]
    assert info["runtime"]["artifact_role"] == "cpu" and info["runtime"]["precision"] == "int8"
    parity = info["parity"]
    assert parity["passed"] is True
    assert parity["artifacts"]["cpu"]["cosine_min"] == manifest["parity"]["artifacts"]["cpu"]["metrics"]["cosine_min"]
    assert info["versions"]["serving"]["onnxruntime"] and info["versions"]["export"]["torch"]


def test_info_has_teis_keys_and_models_have_created(url):
    info = httpx.get(f"{url}/info", timeout=10).json()
    assert info["model_id"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["model_type"] == {"embedding": {"pooling": "mean"}}
    assert info["model_dtype"] == "int8" and len(info["model_sha"]) == 64
    assert info["max_input_length"] == 256 and info["max_client_batch_size"] == 2048
    assert info["max_batch_tokens"] == info["limits"]["max_batch_tokens"] and info["auto_truncate"] is True
    assert info["version"] == info["versions"]["serving"]["embedserve"]
    for key in ("max_concurrent_requests", "tokenization_workers"):
        assert isinstance(info[key], int), key
    models = httpx.get(f"{url}/v1/models", timeout=10).json()
    (model,) = models["data"]
    assert model["id"] == info["model_id"] and model["object"] == "model" and model["owned_by"] == "embedserve"
    assert isinstance(model["created"], int) and 1_600_000_000 < model["created"] <= time.time()


def test_tei_similarity_on_its_route_and_on_post_root(url):
    source = "how do I reset my router?"
    sentences = ["steps to reset a router", "bananas are rich in potassium", source]
    body = {"inputs": {"source_sentence": source, "sentences": sentences}}
    scores = post(url, "/similarity", body).json()
    assert len(scores) == 3 and scores[0] > scores[1] and scores[2] == pytest.approx(1.0, abs=1e-3)
    vectors = np.array(post(url, "/embed", {"inputs": [source, *sentences]}).json())
    np.testing.assert_allclose(scores, vectors[1:] @ vectors[0], atol=1e-5)  # same texts, same batch
    assert post(url, "/", {**body, "parameters": {"truncate": True}}).json() == pytest.approx(scores, abs=1e-6)


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        ({"inputs": {"source_sentence": "s", "sentences": []}}, 400, "empty list"),
        ({"inputs": {"source_sentence": "s", "sentences": ["a"] * 2048}}, 413, "max_inputs=2048"),
        ({"inputs": {"source_sentence": 3, "sentences": ["a"]}}, 422, "'inputs.source_sentence' must be a string"),
        ({"inputs": "s"}, 422, "'inputs' must be an object"),
    ],
)
def test_tei_similarity_bad_input_is_a_clear_4xx(url, body, status, fragment):
    response = post(url, "/similarity", body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"] and response.json()["error_type"] in ("Validation", "Empty")


def test_tei_tokenize_and_decode(url):
    tokens = post(url, "/tokenize", {"inputs": ["Héllo routers", "x"]}).json()
    assert [[t["id"] for t in text] for text in tokens] == [[101, 7592, 2799, 2869, 102], [101, 1060, 102]]
    cls, hello, route, suffix, _ = tokens[0]
    assert cls == {"id": 101, "text": "[CLS]", "special": True, "start": None, "stop": None}
    assert hello == {"id": 7592, "text": "Héllo", "special": False, "start": 0, "stop": 6}  # UTF-8 byte offsets
    assert (route["text"], route["start"], suffix["text"], suffix["stop"]) == ("route", 7, "rs", 14)
    bare = post(url, "/tokenize", {"inputs": "routers", "add_special_tokens": False}).json()
    assert [t["id"] for t in bare[0]] == [2799, 2869]
    assert post(url, "/decode", {"ids": [101, 7592, 2799, 2869, 102]}).json() == "hello routers"
    assert post(url, "/decode", {"ids": [101, 7592], "skip_special_tokens": False}).json() == "[CLS] hello"
    long = post(url, "/tokenize", {"inputs": "word " * 400}).json()[0]
    assert len(long) == 256  # as the model sees it: truncated at max_input_length


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/decode", {"ids": [101, 30522]}, 422, "outside this model's vocabulary of 30522 tokens"),
        ("/decode", {"ids": []}, 400, "empty list"),
        ("/decode", {"ids": ["a"]}, 422, "'ids[0]' must be an integer"),
        ("/decode", {}, 422, "'ids' is required"),
        ("/tokenize", {"inputs": []}, 400, "empty list"),
        ("/tokenize", {"inputs": "a", "prompt_name": "query"}, 422, "unknown prompt_name 'query'"),
        ("/tokenize", {"inputs": ["a"] * 2049}, 413, "max_inputs=2048"),
    ],
)
def test_tei_tokenize_and_decode_bad_input(url, path, body, status, fragment):
    response = post(url, path, body)
    assert response.status_code == status, response.text
    assert fragment in response.json()["error"]


def test_openai_float_and_base64(url, reference, manifest):
    floats = post(url, "/v1/embeddings", {"input": UNSEEN, "model": "all-MiniLM-L6-v2"})
    assert floats.status_code == 200
    body = floats.json()
    assert body["object"] == "list" and body["model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert [d["index"] for d in body["data"]] == list(range(len(UNSEEN)))
    assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] > len(UNSEEN)
    vectors = np.array([d["embedding"] for d in body["data"]])
    assert vectors.shape == (len(UNSEEN), 384)
    assert cosine(vectors, reference).min() >= manifest["parity"]["thresholds"]["int8"]["cosine_min"]
    b64 = post(url, "/v1/embeddings", {"input": UNSEEN, "encoding_format": "base64"}).json()
    decoded = np.array([np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in b64["data"]])
    np.testing.assert_allclose(decoded, vectors, atol=1e-6)


def test_openai_dimensions_truncate_and_renormalise(url):
    full = np.array(post(url, "/v1/embeddings", {"input": "matryoshka"}).json()["data"][0]["embedding"])
    cut = np.array(
        post(url, "/v1/embeddings", {"input": "matryoshka", "dimensions": 32}).json()["data"][0]["embedding"]
    )
    assert cut.shape == (32,) and np.linalg.norm(cut) == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(cut, full[:32] / np.linalg.norm(full[:32]), atol=1e-5)


def test_openai_sdk_unmodified(url, reference, manifest):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
    floor = manifest["parity"]["thresholds"]["int8"]["cosine_min"]
    default = client.embeddings.create(model="all-MiniLM-L6-v2", input=UNSEEN)  # the SDK asks for base64
    as_float = client.embeddings.create(model="all-MiniLM-L6-v2", input=UNSEEN, encoding_format="float")
    for response in (default, as_float):
        vectors = np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)])
        assert cosine(vectors, reference).min() >= floor
    single = client.embeddings.create(model="x", input="one text", dimensions=128)
    assert len(single.data[0].embedding) == 128
    with pytest.raises(openai.BadRequestError):  # 4xx surfaces as the SDK's own error type
        client.embeddings.create(model="x", input=[])


def test_huggingface_inference_client_unmodified(url, reference, manifest):
    hub = pytest.importorskip("huggingface_hub")
    floor = manifest["parity"]["thresholds"]["int8"]["cosine_min"]
    for endpoint in (url, f"{url}/embed"):
        client = hub.InferenceClient(model=endpoint)
        vector = np.asarray(client.feature_extraction(UNSEEN[0]))
        assert vector.shape == (1, 384)
        assert cosine(vector[0], reference[0]) >= floor


def test_tei_embed(url, reference):
    response = post(url, "/embed", {"inputs": UNSEEN})
    assert response.status_code == 200
    vectors = np.array(response.json())
    assert vectors.shape == (len(UNSEEN), 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    raw = np.array(post(url, "/embed", {"inputs": UNSEEN[0], "normalize": False}).json())
    alone = np.array(post(url, "/embed", {"inputs": UNSEEN[0]}).json())
    assert abs(np.linalg.norm(raw) - 1.0) > 1e-3
    np.testing.assert_allclose(raw[0] / np.linalg.norm(raw[0]), alone[0], atol=1e-5)
    assert np.array(post(url, "/embed", {"inputs": "x", "dimensions": 8}).json()).shape == (1, 8)
    long = "word " * 400
    assert post(url, "/embed", {"inputs": long}).status_code == 200  # truncated by default
    left = np.array(post(url, "/embed", {"inputs": long + " finale", "truncation_direction": "Left"}).json())
    assert left.shape == (1, 384)


def test_timing_headers(url):
    response = post(url, "/v1/embeddings", {"input": "headers"})
    for header in ("x-embedserve-tokenize-ms", "x-embedserve-queue-ms", "x-embedserve-inference-ms"):
        assert float(response.headers[header]) >= 0
    assert response.headers["x-embedserve-provider"] == "cpu"
    # TEI's headers, in whole milliseconds, on the TEI route as on the OpenAI one
    texts = ["héllo", "timing headers for TEI dashboards"]
    for response in (post(url, "/embed", {"inputs": texts}), post(url, "/v1/embeddings", {"input": texts})):
        h = response.headers
        assert int(h["x-compute-characters"]) == sum(map(len, texts))
        assert int(h["x-compute-tokens"]) >= len(texts) * 3  # [CLS] + at least a word + [SEP] per text
        parts = [int(h[k]) for k in ("x-tokenization-time", "x-queue-time", "x-inference-time")]
        assert min(parts) >= 0 and int(h["x-total-time"]) >= int(h["x-compute-time"]) >= 0
        assert abs(int(h["x-compute-time"]) - sum(parts)) <= 2  # rounding of three parts


def test_metrics_labelled_with_route_and_provider(url):
    post(url, "/v1/embeddings", {"input": "metrics"})
    post(url, "/embed", {"inputs": ""})  # a 400 is counted too
    text = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'embedserve_request_duration_seconds_count{provider="cpu",route="/v1/embeddings",status="200"}' in text
    assert 'route="/embed",status="400"' in text
    assert "embedserve_texts_total" in text


def scrape(url: str) -> dict[str, float]:
    """Every sample of /metrics by its name and labels (``name{a="b"}``)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=10).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def test_metrics_an_autoscaler_can_use(url):
    """Issue 9: queue depth, requests in flight, batch size in texts and tokens, and time per phase (names in
    docs/observability.md). Three requests of 5 texts on an idle server: three observations per phase, at least
    one inference call of at most 15 texts per request, nothing queued or in flight afterwards."""
    before = scrape(url)
    for i in range(3):
        assert post(url, "/v1/embeddings", {"input": [f"text {i}.{k}" for k in range(5)]}).status_code == 200
    after = scrape(url)

    def grew(name: str) -> float:
        return after[name] - before.get(name, 0.0)

    for phase in ("tokenize", "queue", "inference"):
        assert grew(f'embedserve_phase_seconds_count{{phase="{phase}"}}') == 3
    calls = grew("embedserve_batch_texts_count")
    assert 3 <= calls and grew("embedserve_batch_texts_sum") == 15 and grew("embedserve_batch_seconds_count") == calls
    assert grew("embedserve_batch_tokens_sum") >= 15 * 4  # [CLS] text i . k [SEP]: padded tokens, at least 4 each
    assert after["embedserve_queue_texts"] == 0 and after["embedserve_requests_in_flight"] == 0
    assert grew('embedserve_texts_total{provider="cpu",route="/v1/embeddings"}') == 15


BAD_OPENAI = [
    (b"{not json", 400, None, "not valid JSON"),
    ([1, 2], 422, None, "JSON object"),
    ({}, 422, "input", "'input' is required"),
    ({"input": []}, 400, "input", "empty list"),
    ({"input": ""}, 400, "input", "empty string"),
    ({"input": ["ok", 5]}, 422, "input", "'input[1]' must be a string"),
    ({"input": [[101, 2023]]}, 422, "input", "check_embedding_ctx_length=False"),
    ({"input": list(range(3000))}, 422, "input", "check_embedding_ctx_length=False"),
    ({"input": "a", "encoding_format": "int8"}, 422, "encoding_format", "'float' or 'base64'"),
    ({"input": "a", "dimensions": 0}, 422, "dimensions", "between 1 and 384"),
    ({"input": "a", "dimensions": 385}, 422, "dimensions", "between 1 and 384"),
    ({"input": "a", "dimensions": "64"}, 422, "dimensions", "between 1 and 384"),
    ({"input": ["a"] * 2049}, 413, "input", "max_inputs=2048"),
]


@pytest.mark.parametrize(("body", "status", "param", "fragment"), BAD_OPENAI)
def test_openai_bad_input_is_a_clear_4xx(url, body, status, param, fragment):
    if isinstance(body, bytes):
        response = httpx.post(f"{url}/v1/embeddings", content=body, headers={"content-type": "application/json"})
    else:
        response = post(url, "/v1/embeddings", body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["param"] == param
    assert fragment in error["message"]


BAD_TEI = [
    ({"inputs": "word " * 300, "truncate": False}, 413, "max_input_tokens=256"),
    ({"inputs": []}, 400, "empty list"),
    ({"inputs": "a", "normalize": "no"}, 422, "'normalize' must be true or false"),
    ({"inputs": "a", "truncation_direction": "up"}, 422, "'Right', 'Left'"),
    ({"inputs": "a", "prompt_name": "query"}, 422, "unknown prompt_name 'query'"),
    ({"inputs": 3.5}, 422, "string or a list of strings"),
    (
        {"inputs": ["a", "x" * 20001], "truncate": False},
        413,
        "'inputs[1]' has 20001 characters; the limit is max_chars",
    ),
]


@pytest.mark.parametrize(("body", "status", "fragment"), BAD_TEI)
def test_tei_bad_input_is_a_clear_4xx(url, body, status, fragment):
    response = post(url, "/embed", body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert fragment in payload["error"] and payload["error_type"] in ("Validation", "Empty")


def test_openais_limit_of_2048_inputs_is_accepted_on_an_idle_server(url):
    """2,048 texts in one request (OpenAI's limit): not refused by the queue bound, cut into inference calls by
    the engine, every vector at its input's position."""
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()
    texts = [f"entry {i}: " + " ".join(words[(i * 7 + k * 5) % 16] for k in range(1 + i % 6)) for i in range(2048)]
    response = post(url, "/v1/embeddings", {"input": texts})
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    assert [d["index"] for d in data] == list(range(2048))
    probes = [0, 1, 2, 3, 4, 5, 777, 1500, 2046, 2047]
    alone = post(url, "/v1/embeddings", {"input": [texts[i] for i in probes]}).json()["data"]
    got = np.array([data[i]["embedding"] for i in probes])
    sims = got @ np.array([d["embedding"] for d in alone]).T  # unit vectors: cosine
    assert (sims.argmax(axis=1) == np.arange(len(probes))).all(), "a vector is not at its input's position"
    assert np.diag(sims).min() >= 0.93  # dynamic int8: batch mates move a vector a little


def test_wrong_method_and_unknown_route(url):
    assert httpx.get(f"{url}/v1/embeddings", timeout=10).status_code == 405
    assert httpx.post(f"{url}/v2/nothing", json={}, timeout=10).status_code == 404


def test_64_concurrent_clients_each_get_their_own_vectors(url):
    """64 clients at once, distinct texts (1-4 per request): no error, no vector given to the wrong caller."""
    words = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa".split()
    requests = []
    for i in range(64):
        count = 1 + i % 4
        requests.append(
            [
                f"request {i} item {j}: " + " ".join(words[(i * 7 + j * 3 + k) % 16] for k in range(3 + (i * j) % 40))
                for j in range(count)
            ]
        )
    barrier = threading.Barrier(64)

    def call(texts):
        with httpx.Client(timeout=120) as client:
            barrier.wait()
            # a 429 is retried after its Retry-After, as the openai SDK does: on a loaded test machine the
            # predicted wait may pass the bound; the point here is that every caller gets its own vectors
            for _ in range(5):
                response = client.post(f"{url}/v1/embeddings", json={"input": texts})
                if response.status_code != 429:
                    break
                time.sleep(int(response.headers["retry-after"]))
            return response

    for _ in range(3):  # three rounds of 64 simultaneous requests
        with ThreadPoolExecutor(64) as pool:
            responses = list(pool.map(call, requests))
        assert [r.status_code for r in responses] == [200] * 64
        got = [
            np.array([d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])]) for r in responses
        ]
        all_texts = [t for texts in requests for t in texts]
        alone = np.array([post(url, "/v1/embeddings", {"input": t}).json()["data"][0]["embedding"] for t in all_texts])
        flat = np.concatenate(got)
        assert flat.shape == alone.shape
        sims = flat @ alone.T  # unit vectors: cosine
        assert (sims.argmax(axis=1) == np.arange(len(all_texts))).all(), "a caller received another text's vector"
        assert np.diag(sims).min() >= 0.999999  # per-token int8: batch mates do not move a vector


def test_same_text_alone_or_in_any_batch(url):
    """The served CPU default is batch-invariant: a text's vector does not depend on its batch mates, their lengths,
    the padding or the batch size (dynamic int8 moved it down to cosine 0.984)."""
    texts = ["ok", "batch invariance matters for caching and deduplication", "Été 2026 : 3 × 4 = 12 ✓"]
    short = [f"mate {i}" for i in range(15)]
    long = [f"a long neighbour that pads the batch, number {i}. " * 20 for i in range(7)]
    many = [f"query {i} about something else entirely" for i in range(63)]
    for text in texts:
        alone = np.array(post(url, "/embed", {"inputs": text}).json()[0])
        for mates in (short, long, many, short[:3] + long[:2]):
            cut = len(mates) // 2
            got = post(url, "/embed", {"inputs": [*mates[:cut], text, *mates[cut:]]}).json()[cut]
            assert cosine(alone, got) >= 0.999999, (text, len(mates))
            assert np.abs(alone - np.array(got)).max() < 1e-5


def test_long_texts_are_cut_not_refused_and_the_response_says_so(url):
    """Issue 9: with truncation on, a text far over max_chars is embedded as its first max_seq_length tokens, and
    the response counts the inputs that were cut (OpenAI: ``usage.truncated_inputs``; every route: a header)."""
    long = "the quick brown fox jumps over the lazy dog " * 2_000  # 88,000 characters, max_chars is 20,000
    response = post(url, "/v1/embeddings", {"input": [long, "short"]})
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["truncated_inputs"] == 1
    assert response.headers["x-embedserve-truncated-inputs"] == "1"
    head = post(url, "/v1/embeddings", {"input": [long[:2_000]]})  # ~450 tokens: cut at the same 256
    assert head.json()["usage"]["truncated_inputs"] == 1
    np.testing.assert_allclose(
        response.json()["data"][0]["embedding"], head.json()["data"][0]["embedding"], rtol=0, atol=1e-6
    )
    tei = post(url, "/embed", {"inputs": [long, "short"]})
    assert tei.status_code == 200 and tei.headers["x-embedserve-truncated-inputs"] == "1"


def test_work_for_a_client_that_left_is_dropped(url):
    """Issue 10: a client that gives up on 2,048 texts of ~200 words (minutes of work on 2 cores) no longer leaves
    that work behind: the server sees the disconnect, cancels the request (499 in /metrics) and its remaining jobs
    never reach the model, so the server answers the next request at once."""
    label = 'embedserve_request_duration_seconds_count{provider="cpu",route="/v1/embeddings",status="499"}'
    before = scrape(url).get(label, 0.0)
    texts = [f"document {i}: " + " ".join(f"word{(i * 7 + k) % 997}" for k in range(200)) for i in range(2048)]
    with pytest.raises(httpx.TimeoutException):
        httpx.post(f"{url}/v1/embeddings", json={"input": texts}, timeout=httpx.Timeout(30, read=1.0))
    deadline = time.monotonic() + 60
    while scrape(url).get(label, 0.0) <= before:
        assert time.monotonic() < deadline, "the abandoned request was not cancelled"
        time.sleep(0.5)
    assert post(url, "/v1/embeddings", {"input": "still here"}).status_code == 200


def test_unknown_paths_do_not_grow_metrics(url):
    """Issue 10: every label comes from the route table, so 2,000 distinct unknown paths (each a 404) add no series
    and leave /metrics the same size within 1% (the unbounded version grew 500x over 20,000)."""
    before = httpx.get(f"{url}/metrics", timeout=10).text
    with httpx.Client(base_url=url, timeout=10) as client:
        statuses = {client.get(f"/nope-{uuid.uuid4()}").status_code for _ in range(2000)}
    assert statuses == {404}
    after = httpx.get(f"{url}/metrics", timeout=10).text
    assert "nope-" not in after and series(after) == series(before)
    assert abs(len(after) - len(before)) < 0.01 * len(before)


def series(exposition: str) -> set[str]:
    """The series (name and labels) of a Prometheus exposition."""
    return {line.rsplit(" ", 1)[0] for line in exposition.splitlines() if line and not line.startswith("#")}
