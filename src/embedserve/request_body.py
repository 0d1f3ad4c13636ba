"""What the HTTP edge checks before it reads a request body: framing, media type, content coding.

Pure functions over ASGI header lists (lower-case ``bytes`` names), and an incremental decoder, so the checks are
tested without a server and ``service.py`` only calls them. Each refusal is a library error naming the header:

* both ``Content-Length`` and ``Transfer-Encoding``, or a ``Content-Length`` that is not one decimal number: 400
  (RFC 9112 section 6.3: such a message must be treated as an error; behind a proxy that picks the other header it
  is the precondition for request smuggling, so the edge also closes the connection);
* a POST body that is not JSON by its ``Content-Type``: 415. Like TEI (axum's ``Json`` extractor) a missing
  ``Content-Type`` is refused too: every client this project is tested with sends ``application/json`` (the openai
  SDK, LangChain, LlamaIndex, ``InferenceClient``, httpx ``json=``, aiohttp ``json=``), and ``curl -d`` sends
  ``application/x-www-form-urlencoded``, for which the message says what to add;
* a ``Content-Encoding`` other than ``gzip``, ``deflate`` or ``identity``: 415. Compressed bodies are inflated
  incrementally with the decompressed size bounded by ``max_body_bytes`` (a zip bomb costs at most that much memory
  and gets 413).
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable

from embedserve.errors import MalformedRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

Headers = Iterable[tuple[bytes, bytes]]

#: Content codings this server decodes -> zlib ``wbits`` (gzip: gzip wrapper; deflate: the zlib format, RFC 9110
#: section 8.4.1.2). ``identity`` means no coding.
DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
#: Charsets a JSON body may declare (RFC 8259: JSON exchanged between systems is UTF-8).
JSON_CHARSETS = ("utf-8", "utf8", "us-ascii")
JSON_TYPE_HINT = "send 'Content-Type: application/json' (with curl: -H 'Content-Type: application/json', or --json)"


def header(headers: Headers, name: bytes) -> bytes | None:
    """The value of header ``name`` (lower-case), several occurrences joined with ``,`` as RFC 9110 allows."""
    values = [value for key, value in headers if key == name]
    if not values:
        return None
    return values[0] if len(values) == 1 else b",".join(values)


def check_framing(headers: Headers) -> None:
    """Refuse a request whose body length is ambiguous.

    Raises:
        MalformedRequestError: both Content-Length and Transfer-Encoding, an invalid Content-Length, or a transfer
            coding besides ``chunked`` (uvicorn would pass a ``gzip, chunked`` body on still compressed; compress
            with Content-Encoding instead).
    """
    headers = list(headers)
    length = header(headers, b"content-length")
    transfer = header(headers, b"transfer-encoding")
    if length is not None and transfer is not None:
        raise MalformedRequestError(
            "the request has both Content-Length and Transfer-Encoding headers; send one of them"
        )
    if transfer is not None and [c.strip().lower() for c in transfer.split(b",")] != [b"chunked"]:
        raise MalformedRequestError(
            f"Transfer-Encoding {_show(transfer)} is not supported: only 'chunked' "
            "(to compress a body, send Content-Encoding: gzip)"
        )
    if length is not None:
        values = {v.strip() for v in length.split(b",")}
        if len(values) != 1 or not next(iter(values)).isdigit():
            raise MalformedRequestError(f"the Content-Length header is not a number: {_show(length)}")


def content_length(headers: Headers) -> int | None:
    """The declared body size (after :func:`check_framing`), or ``None`` when there is none."""
    length = header(headers, b"content-length")
    return None if length is None else int(length.split(b",")[0])


def check_json_content_type(headers: Headers) -> None:
    """Accept ``application/json`` and ``application/*+json``, with no charset or a UTF-8 one.

    Raises:
        UnsupportedMediaTypeError: the header is missing, another media type, or declares another charset.
    """
    value = header(headers, b"content-type")
    if value is None:
        raise UnsupportedMediaTypeError(f"the request has no Content-Type header: {JSON_TYPE_HINT}")
    media_type, *params = (part.strip() for part in value.decode("latin-1").split(";"))
    media_type = media_type.lower()
    if media_type != "application/json" and not (
        media_type.startswith("application/") and media_type.endswith("+json")
    ):
        curl = " (curl -d sends application/x-www-form-urlencoded)" if "form-urlencoded" in media_type else ""
        raise UnsupportedMediaTypeError(f"Content-Type {_show(value)} is not supported{curl}: {JSON_TYPE_HINT}")
    for param in params:
        key, _, charset = param.partition("=")
        charset = charset.strip().strip('"').lower()
        if key.strip().lower() == "charset" and charset not in JSON_CHARSETS:
            raise UnsupportedMediaTypeError(
                f"Content-Type {_show(value)} declares charset {charset!r}: JSON bodies must be UTF-8"
            )


def decoder_for(headers: Headers, max_bytes: int) -> BodyDecoder | None:
    """A decoder for the request's ``Content-Encoding`` (``None`` for none or ``identity``).

    Raises:
        UnsupportedMediaTypeError: an unknown coding, or more than one coding.
    """
    value = header(headers, b"content-encoding")
    if value is None:
        return None
    codings = [c.strip().lower() for c in value.decode("latin-1").split(",")]
    codings = [c for c in codings if c and c != "identity"]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in DECODERS:
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {_show(value)} is not supported: send gzip, deflate or identity (one coding)"
        )
    return BodyDecoder(codings[0], max_bytes)


class BodyDecoder:
    """Inflates a compressed body chunk by chunk, never holding more than ``max_bytes + 1`` decoded bytes beyond
    what it has returned, and refusing the body as soon as the decoded size passes ``max_bytes``."""

    def __init__(self, coding: str, max_bytes: int) -> None:
        self.coding = coding
        self.max_bytes = max_bytes
        self.size = 0
        self._inflater = zlib.decompressobj(DECODERS[coding])

    def feed(self, data: bytes) -> bytes:
        """The decoded bytes of the next chunk of the body.

        Raises:
            PayloadTooLargeError: the decoded body is larger than ``max_bytes``.
            MalformedRequestError: the data is not valid for the coding, or follows the end of the stream.
        """
        inflater, out = self._inflater, []
        if inflater.eof:
            if data:
                raise MalformedRequestError(f"the request body has data after the end of its {self.coding} stream")
            return b""
        while data:
            try:  # at most max_bytes + 1 - size bytes out per call: the rest of the input waits in unconsumed_tail
                chunk = inflater.decompress(data, self.max_bytes + 1 - self.size)
            except zlib.error as exc:
                raise MalformedRequestError(f"the request body is not valid {self.coding} data: {exc}") from exc
            self.size += len(chunk)
            if self.size > self.max_bytes:
                raise PayloadTooLargeError(
                    f"the request body decoded from {self.coding} is larger than max_body_bytes={self.max_bytes}",
                    limit_name="max_body_bytes",
                    limit=self.max_bytes,
                )
            out.append(chunk)
            if inflater.eof and inflater.unused_data:
                raise MalformedRequestError(f"the request body has data after the end of its {self.coding} stream")
            data = inflater.unconsumed_tail
        return b"".join(out)

    def finish(self) -> None:
        """Check that the stream ended (a truncated body is refused).

        Raises:
            MalformedRequestError: the body ended before its compressed stream did.
        """
        if not self._inflater.eof:
            raise MalformedRequestError(f"the request body ends before the end of its {self.coding} stream")


def _show(value: bytes) -> str:
    """A header value for a message: quoted, at most 100 characters."""
    text = value.decode("latin-1")
    return repr(text if len(text) <= 100 else text[:100] + "...")
