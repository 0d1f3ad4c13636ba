"""Framing, media type and content coding checks of request bodies (no server)."""

from __future__ import annotations

import gzip
import zlib

import pytest

from embedserve.errors import MalformedRequestError, PayloadTooLargeError, UnsupportedMediaTypeError
from embedserve.protocol import status_for
from embedserve.request_body import (
    BodyDecoder,
    check_framing,
    check_json_content_type,
    content_length,
    decoder_for,
)


def headers(**named: str) -> list[tuple[bytes, bytes]]:
    return [(k.replace("_", "-").encode(), v.encode()) for k, v in named.items()]


@pytest.mark.parametrize(
    "value",
    ["application/json", "application/json; charset=utf-8", "Application/JSON;charset=UTF-8", "application/vnd.x+json"],
)
def test_json_content_types_are_accepted(value):
    check_json_content_type(headers(content_type=value))


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        (None, "no Content-Type header"),
        ("application/x-www-form-urlencoded", "curl -d sends"),
        ("text/plain", "'text/plain' is not supported"),
        ("multipart/form-data; boundary=x", "multipart/form-data"),
        ("application/json; charset=latin-1", "charset 'latin-1'"),
    ],
)
def test_other_content_types_are_415_naming_the_header(value, fragment):
    with pytest.raises(UnsupportedMediaTypeError, match="Content-Type") as caught:
        check_json_content_type(headers(content_type=value) if value else [])
    assert fragment in str(caught.value) and status_for(caught.value) == 415


def test_both_length_headers_or_a_bad_length_are_400():
    with pytest.raises(MalformedRequestError, match="both Content-Length and Transfer-Encoding"):
        check_framing(headers(content_length="5", transfer_encoding="chunked"))
    for bad in ("abc", "-1", "1, 2", "0x10", ""):
        with pytest.raises(MalformedRequestError, match="Content-Length"):
            check_framing(headers(content_length=bad))
    check_framing(headers(content_length="12"))
    check_framing(headers(transfer_encoding="chunked"))
    check_framing(headers(transfer_encoding="Chunked"))
    for coding in ("gzip, chunked", "chunked, chunked", "identity", "br"):
        with pytest.raises(MalformedRequestError, match="only 'chunked'"):
            check_framing(headers(transfer_encoding=coding))
    check_framing(headers(content_length="7, 7"))  # RFC 9110: repeated identical values are one length
    assert content_length(headers(content_length="7, 7")) == 7 and content_length([]) is None


def test_identity_or_no_coding_needs_no_decoder():
    assert decoder_for([], 100) is None
    assert decoder_for(headers(content_encoding="identity"), 100) is None


@pytest.mark.parametrize("value", ["br", "zstd", "gzip, br", "compress"])
def test_unknown_or_stacked_codings_are_415_naming_them(value):
    with pytest.raises(UnsupportedMediaTypeError, match="Content-Encoding") as caught:
        decoder_for(headers(content_encoding=value), 100)
    assert repr(value) in str(caught.value)


@pytest.mark.parametrize(
    ("coding", "compress"),
    [("gzip", gzip.compress), ("deflate", zlib.compress), ("GZIP", gzip.compress)],
)
def test_compressed_bodies_are_decoded_in_any_chunking(coding, compress):
    body = b'{"input": "' + b"hello " * 5000 + b'"}'
    data = compress(body)
    for size in (1, 7, 1000, len(data)):
        decoder = decoder_for(headers(content_encoding=coding), len(body))
        out = b"".join(decoder.feed(data[i : i + size]) for i in range(0, len(data), size))
        decoder.finish()
        assert out == body, size


def test_a_zip_bomb_is_413_without_inflating_it():
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros in about 64 KiB
    decoder = BodyDecoder("gzip", 1024 * 1024)
    decoded = 0
    with pytest.raises(PayloadTooLargeError, match="max_body_bytes=1048576") as caught:
        for i in range(0, len(bomb), 16384):
            decoded += len(decoder.feed(bomb[i : i + 16384]))
    assert caught.value.limit_name == "max_body_bytes" and status_for(caught.value) == 413
    assert decoder.size <= 1024 * 1024 + 1  # never more than the limit and one byte was inflated


def test_broken_truncated_or_trailing_streams_are_400():
    data = gzip.compress(b'{"input": "x"}')
    with pytest.raises(MalformedRequestError, match="not valid gzip"):
        BodyDecoder("gzip", 100).feed(b"not gzip at all")
    decoder = BodyDecoder("gzip", 100)
    decoder.feed(data[:-4])
    with pytest.raises(MalformedRequestError, match="ends before the end"):
        decoder.finish()
    with pytest.raises(MalformedRequestError, match="after the end"):
        BodyDecoder("gzip", 100).feed(data + b"junk")
