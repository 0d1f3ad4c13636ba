"""The clients search teams use, unmodified and offline, against a real server: without a key, and with the key
that a keyed server requires (the README's Clients section shows the same calls).

openai SDK (float and base64), LangChain's ``OpenAIEmbeddings`` (its default 1,000 texts per request; and its
default token-id requests, refused with the setting that fixes them), LlamaIndex's ``OpenAIEmbedding``, and
huggingface_hub's ``InferenceClient`` (feature_extraction, sentence_similarity, health_check).
"""

from __future__ import annotations

import json

import httpx
import huggingface_hub as hub
import numpy as np
import openai
import pytest

# The clients are test dependencies (pyproject's test extra): imported, not importorskip'd, so that a missing one
# fails; LangChain and LlamaIndex inside their tests (seconds of imports that other test runs need not pay).
pytestmark = [pytest.mark.service, pytest.mark.slow]
MODEL = "all-MiniLM-L6-v2"
TOPICS = "router password invoice refund battery recycling interest rates vitamin pizza football".split()


def documents(count: int) -> list[str]:
    """Distinct short documents (each a different mix of topics), no newlines (LlamaIndex replaces them)."""
    return [
        f"note {i}: " + " and ".join(TOPICS[(i * 7 + k * 3) % len(TOPICS)] for k in range(1 + i % 4))
        for i in range(count)
    ]


@pytest.fixture(scope="module", params=["no key", "api key"])
def target(request, api_keys) -> tuple[str, str]:
    """(base URL, key to send): the default server with a placeholder key, or the keyed server with its key."""
    if request.param == "api key":
        return request.getfixturevalue("keyed_server").url, api_keys[0]
    return request.getfixturevalue("server").url, "unused"


def sdk(target) -> openai.OpenAI:
    url, key = target
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def sdk_vectors(target, texts: list[str]) -> np.ndarray:
    response = sdk(target).embeddings.create(model=MODEL, input=texts, encoding_format="float")
    return np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)])


def assert_same_texts(got, expected) -> None:
    """Each vector is its own text's (the closest of the expected ones), within int8's batch-mate tolerance."""
    sims = np.asarray(got) @ np.asarray(expected).T  # unit vectors: cosine
    assert (sims.argmax(axis=1) == np.arange(len(expected))).all(), "a vector belongs to another text"
    assert np.diag(sims).min() >= 0.93


def test_openai_sdk_float_and_base64(target):
    texts = documents(5)
    url, key = target
    formats: list[str | None] = []
    client = openai.OpenAI(
        base_url=f"{url}/v1",
        api_key=key,
        max_retries=0,
        http_client=httpx.Client(
            event_hooks={"request": [lambda r: formats.append(json.loads(r.content).get("encoding_format"))]}
        ),
    )
    as_float = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    as_base64 = client.embeddings.create(model=MODEL, input=texts)  # the SDK asks for base64 and decodes it
    floats = np.array([d.embedding for d in as_float.data])
    decoded = np.array([d.embedding for d in as_base64.data])
    assert floats.shape == (5, 384) and as_float.usage.prompt_tokens > 5
    np.testing.assert_allclose(decoded, floats, atol=1e-6)
    assert formats == ["float", "base64"]


def test_langchain_embeds_1000_plus_documents_in_its_default_chunks(target):
    import langchain_openai

    url, key = target
    sizes: list[int] = []

    def record(request: httpx.Request) -> None:
        sizes.append(len(json.loads(request.content)["input"]))

    embeddings = langchain_openai.OpenAIEmbeddings(
        base_url=f"{url}/v1",
        api_key=key,
        model=MODEL,
        check_embedding_ctx_length=False,  # send strings: this server tokenizes with its own model's tokenizer
        http_client=httpx.Client(event_hooks={"request": [record]}, timeout=120),
    )
    docs = documents(1100)
    vectors = np.array(embeddings.embed_documents(docs))
    assert sizes == [1000, 100]  # LangChain's default chunk_size: one request of 1,000 texts
    assert vectors.shape == (1100, 384)
    probes = [0, 1, 2, 3, 999, 1000, 1099]
    assert_same_texts(vectors[probes], sdk_vectors(target, [docs[i] for i in probes]))
    query = np.array(embeddings.embed_query(docs[5]))
    assert_same_texts(query[None], sdk_vectors(target, [docs[5]]))


def test_langchain_defaults_get_a_4xx_naming_the_setting(target, monkeypatch):
    """On its defaults LangChain tokenizes with OpenAI's tiktoken and sends token ids. tiktoken downloads its
    encoding files at first use; offline, it is given a byte-level encoding instead: the ids differ, the request's
    shape (one list of ids per text) is what LangChain sends with any encoding."""
    import langchain_openai
    import tiktoken

    byte_level = tiktoken.Encoding(
        name="bytes", pat_str=r"\S+|\s+", mergeable_ranks={bytes([i]): i for i in range(256)}, special_tokens={}
    )
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: byte_level)  # MODEL is unknown to tiktoken
    url, key = target
    embeddings = langchain_openai.OpenAIEmbeddings(base_url=f"{url}/v1", api_key=key, model=MODEL, max_retries=0)
    with pytest.raises(openai.UnprocessableEntityError) as info:
        embeddings.embed_documents(["how do I reset my router?", "router reset steps"])
    assert "check_embedding_ctx_length=False" in str(info.value)
    assert info.value.body["code"] == "token_ids_not_supported"


def test_llamaindex_openai_embedding(target):
    import llama_index.embeddings.openai as llama_openai

    url, key = target
    # model_name: any name is sent as is (model= accepts OpenAI's model names only); embed_batch_size is 100
    embedding = llama_openai.OpenAIEmbedding(api_base=f"{url}/v1", api_key=key, model_name=MODEL, max_retries=0)
    docs = documents(150)
    vectors = np.array(embedding.get_text_embedding_batch(docs))
    assert vectors.shape == (150, 384)
    probes = [0, 99, 100, 149]
    assert_same_texts(vectors[probes], sdk_vectors(target, [docs[i] for i in probes]))
    assert_same_texts(np.array([embedding.get_query_embedding(docs[7])]), sdk_vectors(target, [docs[7]]))


def test_huggingface_inference_client(target):
    url, key = target
    client = hub.InferenceClient(model=url, token=key, provider="hf-inference")  # health_check needs the provider
    assert client.health_check() is True
    vector = np.asarray(client.feature_extraction("how do I reset my router?"))
    assert vector.shape == (1, 384)
    sentences = ["steps to reset a router", "bananas are rich in potassium", "how do I reset my router?"]
    scores = client.sentence_similarity("how do I reset my router?", other_sentences=sentences)
    assert len(scores) == 3 and scores[2] > scores[0] > scores[1]
    assert scores[2] == pytest.approx(1.0, abs=0.02)
    expected = sdk_vectors(target, ["how do I reset my router?", *sentences])
    np.testing.assert_allclose(scores, expected[1:] @ expected[0], atol=0.03)  # int8: batch mates move vectors


def test_clients_without_the_key_are_refused(keyed_server):
    url = keyed_server.url
    with pytest.raises(openai.AuthenticationError) as info:
        openai.OpenAI(base_url=f"{url}/v1", api_key="not-the-key", max_retries=0).embeddings.create(
            model=MODEL, input="x"
        )
    assert info.value.status_code == 401 and info.value.body["code"] == "invalid_api_key"
    client = hub.InferenceClient(model=url, token="not-the-key", provider="hf-inference")
    assert client.health_check() is True  # health stays public
    with pytest.raises(hub.errors.HfHubHTTPError) as refused:
        client.feature_extraction("x")
    assert refused.value.response.status_code == 401
