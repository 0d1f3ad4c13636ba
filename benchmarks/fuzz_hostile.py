"""Hostile-input fuzz (issue 10): generated raw HTTP requests that mix every class of bad client input, sent to a
real `bentoml serve`; no answer may be a 5xx, and every 4xx of an embedding route must be in its protocol's error
shape. Writes ``benchmarks/results/fuzz_hostile.json``; ``tests/service/test_fuzz_hostile.py`` runs the same
strategy (:func:`recipes`) for ~1,500 requests on every CI run.

A request is drawn as a :class:`Recipe`: independent choices of route, body (a valid body for the route with 0-3
field mutations, then at most one whole-body transform), ``Content-Type``, ``Content-Encoding`` and framing, so
that the classes combine (a 3,000-deep array with a lone surrogate, gzipped and chunked; a 100,000-digit
``dimensions`` under ``text/plain``). A recipe is small and its ``repr`` reproduces the request exactly:
``Recipe(...).wire()`` builds the same bytes (big values are built from a size, not stored).

Input classes (counted per class in the results; :data:`CLASSES`):

* ``route:<path>``: the six POST routes, a few GETs and unknown paths/methods;
* body mutations (``body:<kind>``): lone surrogates as ``\\ud800`` escapes and as raw UTF-8 bytes (``ED A0 80``),
  invalid UTF-8, nesting 500-5,000 levels, integers of 4,000-100,000 digits (and 20-400 digits), 1e999 / NaN /
  Infinity / -0.0, wrong types, empty arrays, arrays over ``max_inputs``, empty strings, very long strings,
  duplicate keys; whole-body transforms: non-JSON bytes, truncated JSON, a BOM, UTF-16, trailing garbage, no body;
* ``content-type:<kind>``: application/json, with charset parameters, ``+json``, text/plain, missing, garbage,
  multipart, form-urlencoded, two headers;
* ``content-encoding:<kind>``: none, identity, gzip (valid, truncated, corrupt, a bomb over ``max_body_bytes``
  inflated but ~4-16 KiB on the wire), deflate (zlib, and raw deflate), br, unknown codings, ``gzip, gzip``;
* ``framing:<kind>``: a correct Content-Length (httpx, kept-alive connection), a Content-Length smaller than the
  body, chunked transfer, unusual transfer codings (``gzip, chunked``, ``identity``, chunked twice, a chunk size
  that is not hex, chunk extensions, trailers), all on a raw socket. uvicorn's parser refuses some of the last kind
  with its own plain-text 400 before the app sees them: those are checked for the status only.

    python -m benchmarks.fuzz_hostile --start --requests 6000              # -> benchmarks/results/fuzz_hostile.json
    python -m benchmarks.fuzz_hostile --url http://127.0.0.1:3000 --requests 500 --seed 7 --out /tmp/f.json
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import math
import socket
import time
import zlib
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import httpx

#: The server's default limits (``embedserve.config.Limits``): arrays over max_inputs, bombs over max_body_bytes.
MAX_INPUTS = 2048
MAX_BODY_BYTES = 4 * 1024 * 1024
DIMENSION = 384

EMBEDDING_ROUTES = {
    "/v1/embeddings": "openai",
    "/embed": "tei",
    "/": "tei",
    "/similarity": "tei",
    "/tokenize": "tei",
    "/decode": "tei",
}
#: Requests that are not a POST to an embedding route: answered, never a 5xx (no error shape asked of them).
OTHER_ROUTES = (
    ("GET", "/info"),
    ("GET", "/health"),
    ("GET", "/v1/models"),
    ("GET", "/openapi.json"),
    ("GET", "/embed"),  # 405
    ("POST", "/info"),  # 405
    ("POST", "/v1/embedding"),  # 404
    ("POST", "/embed/"),  # 404
    ("PUT", "/v1/embeddings"),  # 405
    ("POST", "/%00"),
)
TEI_ERROR_TYPES = {"Empty", "Validation", "Overloaded", "Backend", "Unauthorized", "Tokenizer"}

# -- JSON with hostile values ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Raw:
    """JSON text written verbatim (a number orjson cannot write, an escape, bytes that are not UTF-8)."""

    text: bytes


@dataclass(frozen=True)
class Pairs:
    """A JSON object as a list of (key, value): keys may repeat; a key may be :class:`Raw`."""

    items: tuple[tuple[Any, Any], ...]


def to_json(value: Any) -> bytes:
    """``value`` as JSON bytes, :class:`Raw` and :class:`Pairs` included (iterative: nesting is not bounded by
    Python's recursion limit)."""
    out: list[bytes] = []
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, bytes):  # punctuation pushed below
            out.append(item)
        elif isinstance(item, Raw):
            out.append(item.text)
        elif isinstance(item, (dict, Pairs)):
            pairs = list(item.items if isinstance(item, Pairs) else item.items())
            stack.append(b"}")
            for i, (key, val) in enumerate(reversed(pairs)):
                stack.append(val)
                stack.append(b":")
                stack.append(key if isinstance(key, Raw) else Raw(json.dumps(key).encode()))
                if i < len(pairs) - 1:
                    stack.append(b",")
            stack.append(b"{")
        elif isinstance(item, (list, tuple)):
            stack.append(b"]")
            for i, val in enumerate(reversed(item)):
                stack.append(val)
                if i < len(item) - 1:
                    stack.append(b",")
            stack.append(b"[")
        else:
            out.append(json.dumps(item, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    return b"".join(out)


# -- the hostile values ------------------------------------------------------------------------------------------

SURROGATE_ESCAPES = (rb"\ud800", rb"\udfff", rb"\udc00\ud800", rb"\ud83d", rb"\ud800\u0041", rb"\uDBFF")
SURROGATE_BYTES = (b"\xed\xa0\x80", b"\xed\xbf\xbf", b"\xed\xb0\x80\xed\xa0\x80")
INVALID_UTF8 = (b"\xff", b"\xfe\xff", b"\xc3\x28", b"\xc0\xaf", b"\xe2\x82", b"\xf4\x90\x80\x80", b"\x80", b"\xf8\x88")
#: Object keys that are not valid text.
BAD_KEYS = SURROGATE_ESCAPES + SURROGATE_BYTES + INVALID_UTF8
SPECIAL_FLOATS = (
    b"1e999",
    b"-1e999",
    b"NaN",
    b"Infinity",
    b"-Infinity",
    b"-0.0",
    b"1e-999",
    b"-0",
    b"384.0",
    b"4.000000000000001",
    b"1.7976931348623157e309",
    b"1E2",
    b"0.5",
)
WRONG_TYPES: tuple[Any, ...] = (
    True,
    False,
    None,
    0,
    -1,
    1.5,
    "384",
    "text",
    [],
    [1, 2, 3],
    [["nested"]],
    {},
    {"a": 1},
    [None],
    [True, False],
    Raw(b"9223372036854775808"),
    Raw(b"-9223372036854775809"),
    "true",
    [{"text": "hi"}],
)
WORDS = "river stone garden window lantern copper violet harbor meadow signal thunder orchard".split()
#: Valid JSON strings that are unusual text (they reach the tokenizer and the model): whitespace only, NUL and
#: control characters, zero-width and bidi marks, emoji and ZWJ sequences, 2,000 combining marks, noncharacters,
#: one 20,000-character word, the model's special tokens as text, characters that change length when lower-cased
#: or normalised (offsets in /tokenize), CJK.
ODD_TEXTS = (
    " ",
    "\t\n\r ",
    "\u0000",
    "a\u0000b\u0001c\u001f",
    "\u200b\u200c\u200d\ufeff",
    "\u202eevil\u202c text",
    "\U0001f916" * 500,
    "\U0001f469\u200d\U0001f469\u200d\U0001f467\u200d\U0001f466 family",
    "e" + "\u0301" * 2000,
    "\uffff\U0010ffff\ufdd0",
    "x" * 20_000,
    "[CLS] [SEP] [PAD] [MASK] [UNK] <s></s> <|endoftext|>",
    "\u0130stanbul \u1e9e \ufb01 \ufdfa \u2126",
    "\u4e2d\u6587\u6587\u672c" * 300,
    "\r\n" * 1000,
    "0" * 5000,
    "\u1100\u1161\u11a8 \u0e01\u0e33 \u0928\u092e\u0938\u094d\u0924\u0947",
)
#: Whole-body replacements that are not JSON (or not an object).
NOT_JSON = (
    b"inputs=hello+world",
    b"<xml><inputs>hi</inputs></xml>",
    b"{inputs: 'hi'}",
    b'{"inputs": "hi",}',
    b"'single quoted'",
    b"\x00" * 16,
    b"null",
    b"[]",
    b"1",
    b'"just a string"',
    b"\x1f\x8b\x08\x00garbage",
    b"--boundary\r\nContent-Disposition: form-data; name=inputs\r\n\r\nhi\r\n--boundary--\r\n",
    b'{"inputs": "a"} {"inputs": "b"}',
    b"\xff\xfe\xfd",
)


def text(i: int) -> str:
    """A short text (a few tokens)."""
    return " ".join(WORDS[(i + k) % len(WORDS)] for k in range(1 + i % 5))


def long_text(chars: int) -> str:
    return ("lantern harbor " * (chars // 15 + 1))[:chars]


def nested(depth: int, shape: int) -> Raw:
    """``depth`` levels of arrays, objects or both around a string."""
    if shape == 0:
        return Raw(b"[" * depth + b'"deep"' + b"]" * depth)
    if shape == 1:
        return Raw(b'{"a":' * depth + b'"deep"' + b"}" * depth)
    return Raw(b'[{"a":' * (depth // 2) + b"1" + b"}]" * (depth // 2))


def huge_integer(digits: int, negative: bool) -> Raw:
    """An integer of ``digits`` digits (not a power of ten: every digit is used)."""
    body = (b"1234567890" * (digits // 10 + 1))[:digits]
    return Raw((b"-" if negative else b"") + body)


def string_with(bad: bytes, escape: bool) -> Raw:
    """A JSON string holding ``bad`` (an escape sequence, or raw bytes) between ordinary words."""
    return Raw(b'"lantern ' + bad + b' harbor"') if escape else Raw(b'"' + bad + b'"')


def hostile_value(kind: str, param: int, variant: int, numeric: bool) -> Any:
    """The value of mutation ``kind``; ``param`` is a size, ``variant`` picks among fixed cases."""
    if kind == "surrogate_escape":
        return string_with(SURROGATE_ESCAPES[variant % len(SURROGATE_ESCAPES)], variant % 2 == 0)
    if kind == "surrogate_bytes":
        return string_with(SURROGATE_BYTES[variant % len(SURROGATE_BYTES)], variant % 2 == 0)
    if kind == "invalid_utf8":
        return string_with(INVALID_UTF8[variant % len(INVALID_UTF8)], variant % 2 == 0)
    if kind == "deep_nesting":
        return nested(param, variant % 3)
    if kind == "huge_integer":
        return huge_integer(param, variant % 4 == 1)
    if kind == "special_float":
        return Raw(SPECIAL_FLOATS[variant % len(SPECIAL_FLOATS)])
    if kind == "wrong_type":  # a copy: a later mutation may write into it
        return copy.deepcopy(WRONG_TYPES[variant % len(WRONG_TYPES)])
    if kind == "empty_array":
        return []
    if kind == "huge_array":
        if numeric:  # token ids: valid ids, many of them
            return [101 + (i % 20000) for i in range(param * 10)]
        return [text(i) for i in range(param)]
    if kind == "empty_string":
        return ""
    if kind == "long_string":
        return long_text(param)
    if kind == "odd_text":
        return ODD_TEXTS[variant % len(ODD_TEXTS)] if variant % 4 else [text(1), ODD_TEXTS[param % len(ODD_TEXTS)]]
    raise ValueError(f"unknown mutation {kind!r}")


#: Mutation kind -> how its size parameter is drawn (min, max); kinds without a size draw 0.
MUTATION_SIZES = {
    "deep_nesting": (500, 5000),
    "huge_integer": (4000, 100_000),
    "huge_array": (MAX_INPUTS + 1, 2 * MAX_INPUTS),
    "long_string": (1000, 200_000),
    "odd_text": (0, 100),
}
MUTATIONS = (
    "surrogate_escape",
    "surrogate_bytes",
    "invalid_utf8",
    "deep_nesting",
    "huge_integer",
    "special_float",
    "wrong_type",
    "empty_array",
    "huge_array",
    "empty_string",
    "long_string",
    "odd_text",
    "duplicate_keys",
    "surrogate_key",
)
TRANSFORMS = ("none", "not_json", "truncated", "bom", "utf16", "trailing_garbage", "no_body", "whitespace")


# -- valid bodies and their fields ---------------------------------------------------------------------------------


def valid_body(route: str, variant: int, size: int) -> dict[str, Any]:
    """A valid body for ``route`` (``variant`` picks optional fields, ``size`` the number of texts, 1-8)."""
    texts = [text(variant + i) for i in range(size)]
    one = variant % 3 == 0
    if route == "/v1/embeddings":
        body: dict[str, Any] = {"input": texts[0] if one else texts}
        if variant % 2:
            body["model"] = "embedserve"
        if variant % 5 == 1:
            body["encoding_format"] = "base64" if variant % 10 == 1 else "float"
        if variant % 4 == 3:
            body["dimensions"] = 64
        if variant % 7 == 2:
            body["user"] = "fuzz"
        return body
    if route in ("/embed", "/") and not (route == "/" and variant % 2):
        body = {"inputs": texts[0] if one else texts}
        for i, (key, value) in enumerate(
            (
                ("normalize", variant % 2 == 0),
                ("truncate", variant % 3 != 1),
                ("truncation_direction", "Left"),
                ("dimensions", 32),
            )
        ):
            if variant >> i & 1:
                body[key] = value
        return body
    if route in ("/similarity", "/"):
        body = {"inputs": {"source_sentence": text(variant), "sentences": texts}}
        if variant % 3 == 1:
            body["parameters"] = {"truncate": variant % 2 == 0, "truncation_direction": "Right"}
        return body
    if route == "/tokenize":
        body = {"inputs": texts[0] if one else texts}
        if variant % 2:
            body["add_special_tokens"] = variant % 4 == 1
        return body
    if route == "/decode":
        body = {"ids": [101, *(1000 + (variant * 37 + i) % 20000 for i in range(size)), 102]}
        if variant % 2:
            body["skip_special_tokens"] = variant % 4 == 1
        return body
    return {"inputs": text(variant)}  # other routes: a body anyway


#: Per route, the fields a mutation may hit (a path into the body; an int is a list index) and which are numeric.
FIELDS: dict[str, tuple[tuple[Any, ...], ...]] = {
    "/v1/embeddings": (
        ("input",),
        ("input", 0),
        ("model",),
        ("encoding_format",),
        ("dimensions",),
        ("user",),
        ("extra",),
        (),
    ),
    "/embed": (
        ("inputs",),
        ("inputs", 0),
        ("normalize",),
        ("truncate",),
        ("truncation_direction",),
        ("prompt_name",),
        ("dimensions",),
        ("extra",),
        (),
    ),
    "/similarity": (
        ("inputs",),
        ("inputs", "source_sentence"),
        ("inputs", "sentences"),
        ("inputs", "sentences", 0),
        ("parameters",),
        ("parameters", "truncate"),
        ("parameters", "prompt_name"),
        ("extra",),
        (),
    ),
    "/tokenize": (("inputs",), ("inputs", 0), ("add_special_tokens",), ("prompt_name",), ("extra",), ()),
    "/decode": (("ids",), ("ids", 0), ("ids", 1), ("skip_special_tokens",), ("extra",), ()),
}
FIELDS["/"] = FIELDS["/embed"] + FIELDS["/similarity"][1:5]
NUMERIC = {"dimensions", "ids", 0, 1}


def _container(body: Any, path: tuple[Any, ...], *, create: bool) -> tuple[Any, Any] | None:
    """The container of the field at ``path`` and its key (dicts are made along the way when ``create``); ``None``
    when the path does not exist in this body (the mutation then goes to the root's first field)."""
    node = body
    for key in path[:-1]:
        if isinstance(node, dict) and key in node:
            node = node[key]
        elif isinstance(node, dict) and create and isinstance(key, str):
            node[key] = {}
            node = node[key]
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return None
    last = path[-1]
    if isinstance(node, list) and isinstance(last, int):
        return (node, last) if last < len(node) else None
    if isinstance(node, dict) and isinstance(last, str):
        return node, last
    return None


def mutate(body: dict[str, Any], route: str, mutation: Mutation) -> Any:
    """``body`` with ``mutation`` applied (in place where possible); the new root."""
    fields = FIELDS.get(route, (("inputs",), ()))
    path = fields[mutation.field % len(fields)]
    numeric = any(part in NUMERIC for part in path[-1:])
    if mutation.kind in ("duplicate_keys", "surrogate_key"):
        return _mutate_keys(body, tuple(p for p in path if isinstance(p, str)), mutation)
    value = hostile_value(mutation.kind, mutation.size, mutation.variant, numeric)
    if not path:  # the whole body
        return value
    found = _container(body, path, create=True)
    if found is None:
        found = (body, next(iter(body)))
    container, key = found
    container[key] = value
    return body


def _mutate_keys(body: dict[str, Any], path: tuple[Any, ...], mutation: Mutation) -> Any:
    """The object holding the field at ``path`` (the body itself for the root) with a key repeated (the hostile
    value first or last), or with one more key that holds a lone surrogate or invalid UTF-8."""
    where = path[:-1]
    node = body
    for key in where:  # the object holding the field, if this body has it
        if not (isinstance(node, dict) and key in node):
            where, node = (), body
            break
        node = node[key]
    if not isinstance(node, dict) or not node:
        where, node = (), body
    items = list(node.items())
    key = path[-1] if path and path[-1] in node else items[0][0]
    if mutation.kind == "surrogate_key":
        bad = BAD_KEYS[mutation.variant % len(BAD_KEYS)]
        items.insert(mutation.size % (len(items) + 1), (Raw(b'"' + bad + b'"'), node[key]))
    else:
        wrong = mutation.variant % 4 < 2  # the repeat holds a wrong type (before or after the good one), or the same
        other = copy.deepcopy(WRONG_TYPES[mutation.field % len(WRONG_TYPES)]) if wrong else node[key]
        index = next(i for i, (k, _) in enumerate(items) if k == key)
        items.insert(index + mutation.variant % 2, (key, other))
    replaced = Pairs(tuple(items))
    if not where:
        return replaced
    parent = body
    for key in where[:-1]:
        parent = parent[key]
    parent[where[-1]] = replaced
    return body


# -- the recipe ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mutation:
    kind: str
    field: int = 0
    size: int = 0
    variant: int = 0


@dataclass(frozen=True)
class Recipe:
    """One request as independent choices; :meth:`wire` builds its bytes (deterministically)."""

    method: str
    path: str
    body_variant: int = 0
    texts: int = 1
    mutations: tuple[Mutation, ...] = ()
    transform: str = "none"
    transform_param: int = 0
    content_type: str = "json"
    encoding: str = "none"
    encoding_param: int = 0
    framing: str = "length"
    framing_param: int = 0
    query: str = ""

    @property
    def protocol(self) -> str | None:
        """``openai`` or ``tei`` for a POST to an embedding route (its 4xx has that shape), else ``None``."""
        return EMBEDDING_ROUTES.get(self.path) if self.method == "POST" else None

    def classes(self) -> list[str]:
        """The input classes this request exercises (what the results count)."""
        found = [f"route:{self.method} {self.path}"]
        found += [f"body:{m.kind}" for m in dict.fromkeys(self.mutations)]
        if self.transform != "none":
            found.append(f"body:{self.transform}")
        if not self.mutations and self.transform == "none":
            found.append("body:valid")
        found.append(f"content-type:{self.content_type}")
        found.append(f"content-encoding:{self.encoding}")
        found.append(f"framing:{self.framing}")
        return found

    def json_body(self) -> bytes:
        """The body before any content coding."""
        body: Any = valid_body(self.path, self.body_variant, self.texts)
        # key mutations last: they turn an object into a list of pairs, which later mutations do not enter
        for mutation in sorted(self.mutations, key=lambda m: m.kind in ("duplicate_keys", "surrogate_key")):
            body = mutate(body, self.path, mutation) if isinstance(body, dict) else body
        raw = to_json(body)
        return transform(raw, self.transform, self.transform_param)

    def wire(self) -> Wire:
        """Method, target, headers and the bytes of the body as sent."""
        raw = self.json_body()
        headers: list[tuple[bytes, bytes]] = [(b"content-type", v) for v in CONTENT_TYPES[self.content_type]]
        body, coding = encode(raw, self.encoding, self.encoding_param, self.path)
        if coding is not None:
            headers.append((b"content-encoding", coding))
        return Wire(self.method, self.path + self.query, headers, body, self.framing, self.framing_param)


def transform(raw: bytes, kind: str, param: int) -> bytes:
    """A whole-body transform of the serialized JSON."""
    if kind == "none":
        return raw
    if kind == "not_json":
        return NOT_JSON[param % len(NOT_JSON)]
    if kind == "truncated":
        return raw[: max(0, len(raw) - 1 - param % max(1, len(raw)))]
    if kind == "bom":
        return b"\xef\xbb\xbf" + raw
    if kind == "utf16":
        return raw.decode("utf-8", "replace").encode("utf-16-le" if param % 2 else "utf-16", "surrogatepass")
    if kind == "trailing_garbage":
        return raw + (b"garbage", b"\x00", b"}", b"]]]", b" {}")[param % 5]
    if kind == "no_body":
        return b""
    if kind == "whitespace":
        return b" \n\t\r" * (1 + param % 1000) + raw + b"\n" * (param % 7)
    raise ValueError(f"unknown transform {kind!r}")


CONTENT_TYPES: dict[str, tuple[bytes, ...]] = {
    "json": (b"application/json",),
    "json_charset_utf8": (b"application/json; charset=utf-8",),
    "json_charset_quoted": (b'application/json;charset="UTF-8"',),
    "json_charset_latin1": (b"application/json; charset=latin-1",),
    "json_charset_utf16": (b"application/json; charset=utf-16",),
    "vendor_json": (b"application/vnd.api+json",),
    "upper_case": (b"APPLICATION/JSON",),
    "text_plain": (b"text/plain",),
    "missing": (),
    "empty": (b"",),
    "garbage": (b";;==; \t,,application",),
    "garbage_high_bytes": (b"application/json\xe9\xff",),
    "multipart": (b"multipart/form-data; boundary=boundary",),
    "form": (b"application/x-www-form-urlencoded",),
    "two_headers": (b"application/json", b"text/plain"),
    "json_then_params": (b"application/json; q=1; charset=utf-8; boundary=x",),
}


@cache
def _bomb(size: int, json_prefix: bool) -> bytes:
    """A gzip bomb: ``size`` bytes of JSON (or spaces) that compress to about a thousandth of that."""
    if json_prefix:
        payload = b'{"inputs": "' + b"a" * size + b'"}'
    else:
        payload = b" " * size
    return gzip.compress(payload, compresslevel=9, mtime=0)


ENCODINGS = (
    "none",
    "identity",
    "gzip",
    "x-gzip",
    "gzip_upper",
    "gzip_truncated",
    "gzip_corrupt",
    "gzip_trailing",
    "gzip_bomb",
    "deflate",
    "deflate_raw",
    "br",
    "unknown",
    "gzip_gzip",
    "gzip_identity",
    "empty",
)


def encode(raw: bytes, kind: str, param: int, path: str) -> tuple[bytes, bytes | None]:
    """(the body as sent, the Content-Encoding header or ``None``)."""
    if kind == "none":
        return raw, None
    if kind == "identity":
        return raw, b"identity"
    if kind in ("gzip", "x-gzip", "gzip_upper"):
        return gzip.compress(raw, mtime=0), {"gzip": b"gzip", "x-gzip": b"x-gzip", "gzip_upper": b"GZIP"}[kind]
    if kind == "gzip_truncated":
        zipped = gzip.compress(raw, mtime=0)
        return zipped[: max(1, len(zipped) - 1 - param % len(zipped))], b"gzip"
    if kind == "gzip_corrupt":
        zipped = bytearray(gzip.compress(raw, mtime=0))
        for k in range(1 + param % 4):
            i = (param * 7919 + k * 104729) % len(zipped)
            zipped[i] ^= 0x5A
        return bytes(zipped), b"gzip"
    if kind == "gzip_trailing":
        return gzip.compress(raw, mtime=0) + b"tail" * (1 + param % 3), b"gzip"
    if kind == "gzip_bomb":  # 4-16 MiB inflated, over max_body_bytes=4 MiB; 4-16 KiB on the wire
        size = MAX_BODY_BYTES + 1 + (param % 4) * 4 * 1024 * 1024
        return _bomb(size, param % 2 == 0), b"gzip"
    if kind == "deflate":
        return zlib.compress(raw), b"deflate"
    if kind == "deflate_raw":  # RFC 9110's deflate is the zlib format: raw deflate is refused
        packer = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        return packer.compress(raw) + packer.flush(), b"deflate"
    if kind == "br":
        return raw, b"br"
    if kind == "unknown":
        return raw, (b"compress", b"zstd", b"x-custom", b"gzip;q=1", b"\xff\xfe")[param % 5]
    if kind == "gzip_gzip":
        return gzip.compress(gzip.compress(raw, mtime=0), mtime=0), (b"gzip, gzip", b"gzip,deflate")[param % 2]
    if kind == "gzip_identity":
        return gzip.compress(raw, mtime=0), b"identity, gzip"
    if kind == "empty":
        return raw, b""
    raise ValueError(f"unknown encoding {kind!r}")


@dataclass
class Wire:
    """A request as it goes on the wire."""

    method: str
    target: str
    headers: list[tuple[bytes, bytes]]
    body: bytes
    framing: str = "length"
    framing_param: int = 0

    def raw(self, host: str) -> bytes:
        """The whole request for a raw socket (``Connection: close``: one request per connection)."""
        lines = [b"%s %s HTTP/1.1" % (self.method.encode(), self.target.encode()), b"Host: " + host.encode()]
        lines += [name + b": " + value for name, value in self.headers]
        lines.append(b"Connection: close")
        body = self.body
        if self.framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
            body = chunked(body, 1 + self.framing_param)
        elif self.framing == "transfer_coding":
            codings, body = odd_transfer(body, self.framing_param)
            lines += [b"Transfer-Encoding: " + coding for coding in codings]
        elif self.framing == "short_length":
            lines.append(b"Content-Length: %d" % max(0, len(body) - 1 - self.framing_param % max(1, len(body))))
        else:
            lines.append(b"Content-Length: %d" % len(body))
        return b"\r\n".join(lines) + b"\r\n\r\n" + body


def odd_transfer(body: bytes, variant: int) -> tuple[list[bytes], bytes]:
    """(Transfer-Encoding headers, the body as sent) for an unusual transfer coding: codings other than chunked,
    chunked twice, a chunk size that is not hex, a chunk extension, a trailer."""
    variant %= 7
    if variant == 0:
        return [b"gzip, chunked"], chunked(gzip.compress(body, mtime=0), 64)
    if variant == 1:
        return [b"identity"], body
    if variant == 2:
        return [b"xchunked"], chunked(body, 64)
    if variant == 3:
        return [b"chunked", b"chunked"], chunked(body, 64)
    if variant == 4:
        return [b"chunked"], b"zz\r\n" + body + b"\r\n0\r\n\r\n"
    if variant == 5:
        return [b"chunked"], chunked(body, 64).replace(b"\r\n", b";ext=1\r\n", 1)
    return [b"chunked"], chunked(body, 64)[:-2] + b"X-Trailer: 1\r\n\r\n"


def chunked(body: bytes, size: int) -> bytes:
    """``body`` in chunks of ``size`` bytes (the last one shorter) and the final empty chunk."""
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


# -- the strategy ---------------------------------------------------------------------------------------------------


def recipes() -> Any:
    """The hypothesis strategy of :class:`Recipe` (hypothesis is imported here: the module's other parts need only
    the standard library and httpx)."""
    from hypothesis import strategies as st

    @st.composite
    def mutation(draw: Callable[[Any], Any]) -> Mutation:
        kind = draw(st.sampled_from(MUTATIONS))
        low, high = MUTATION_SIZES.get(kind, (0, 0))
        if kind == "deep_nesting":  # orjson's depth limit is 1024: both sides of it, and at it
            size = draw(st.one_of(st.integers(low, 1023), st.integers(1024, 1026), st.integers(1027, high)))
        elif kind == "huge_integer":  # 20-400 digits parse as floats (or overflow); 4,000+ are the class asked for
            size = draw(st.one_of(st.integers(low, high), st.integers(low, high), st.integers(20, 400)))
        else:
            size = draw(st.integers(low, high))
        return Mutation(kind, draw(st.integers(0, 16)), size, draw(st.integers(0, 40)))

    @st.composite
    def recipe(draw: Callable[[Any], Any]) -> Recipe:
        post = draw(st.integers(0, 9)) > 0
        if post:
            method, path = "POST", draw(st.sampled_from(tuple(EMBEDDING_ROUTES)))
        else:
            method, path = draw(st.sampled_from(OTHER_ROUTES))
        framing = draw(st.sampled_from(("length",) * 12 + ("chunked", "chunked", "short_length", "transfer_coding")))
        return Recipe(
            method=method,
            path=path,
            body_variant=draw(st.integers(0, 63)),
            texts=draw(st.integers(1, 8)),
            mutations=tuple(draw(st.lists(mutation(), min_size=0, max_size=3))),
            transform=draw(st.sampled_from(("none",) * 12 + TRANSFORMS[1:])),
            transform_param=draw(st.integers(0, 2000)),
            content_type=draw(st.sampled_from(("json",) * 12 + tuple(CONTENT_TYPES)[1:])),
            encoding=draw(st.sampled_from(("none",) * 12 + ENCODINGS[1:])),
            encoding_param=draw(st.integers(0, 1000)),
            framing=framing,
            framing_param=draw(st.integers(0, 300)),
            query=draw(st.sampled_from(("",) * 9 + ("?x=1",))),
        )

    return recipe()


#: Every class the strategy can produce (the results say how often each one was sent).
CLASSES = (
    [f"route:POST {path}" for path in EMBEDDING_ROUTES]
    + [f"route:{method} {path}" for method, path in OTHER_ROUTES]
    + ["body:valid"]
    + [f"body:{kind}" for kind in MUTATIONS]
    + [f"body:{kind}" for kind in TRANSFORMS[1:]]
    + [f"content-type:{kind}" for kind in CONTENT_TYPES]
    + [f"content-encoding:{kind}" for kind in ENCODINGS]
    + ["framing:length", "framing:chunked", "framing:short_length", "framing:transfer_coding"]
)

# -- sending and checking --------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def send(client: httpx.Client, url: str, wire: Wire, timeout: float = 60.0) -> list[Answer]:
    """Send ``wire``: httpx (a kept-alive connection) for a correct Content-Length, else a raw socket. Every answer
    that came back (a Content-Length smaller than the body leaves the rest to be read as another request)."""
    if wire.framing == "length":
        response = client.request(wire.method, url + wire.target, content=wire.body, headers=wire.headers)
        return [Answer(response.status_code, dict(response.headers), response.content)]
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(wire.raw(f"{host}:{port}"))
        received = b""
        try:
            while chunk := sock.recv(65536):
                received += chunk
        except (ConnectionResetError, TimeoutError):
            pass
    return parse_answers(received)


def parse_answers(data: bytes) -> list[Answer]:
    """The HTTP/1.1 responses in ``data`` (a Content-Length or chunked body each)."""
    answers = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        if not sep:
            break
        status_line, *lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "content-length" in headers:
            size = int(headers["content-length"])
            body, data = rest[:size], rest[size:]
        elif headers.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                size_line, _, rest = rest.partition(b"\r\n")
                size = int(size_line.split(b";")[0] or b"0", 16)
                body, rest = body + rest[:size], rest[size + 2 :]
                if size == 0:
                    break
            data = rest
        else:
            body, data = rest, b""
        status = int(status_line.split()[1])
        if status >= 200:  # a 100 Continue is not the answer
            answers.append(Answer(status, headers, body))
    return answers


def problems(recipe: Recipe, answers: list[Answer]) -> list[str]:
    """What is wrong with the answers to ``recipe`` (empty: nothing)."""
    if not answers:
        return ["no answer"]
    found = [f"{a.status} {a.body[:300]!r}" for a in answers if a.status >= 500]
    first = answers[0]
    if first.status == 200 and recipe.method == "POST" and recipe.path in VECTOR_ROUTES:
        trouble = vector_problem(first.body)
        if trouble:
            found.append(f"200 {trouble}: {first.body[:300]!r}")
    if recipe.protocol is not None and 400 <= first.status < 500 and not parser_refusal(recipe, first):
        shape = error_shape_problem(recipe.protocol, first)
        if shape:
            found.append(f"{first.status} {shape}: {first.body[:300]!r}")
    return found


def parser_refusal(recipe: Recipe, answer: Answer) -> bool:
    """Whether ``answer`` is uvicorn's own 400 for a message its HTTP parser refuses (an unknown or repeated
    transfer coding, a chunk size that is not hex): the request never reaches the app, so it cannot be in the
    protocol's error shape."""
    return recipe.framing == "transfer_coding" and answer.status == 400 and answer.body == PARSER_REFUSAL


PARSER_REFUSAL = b"Invalid HTTP request received."
#: Routes whose 200 holds vectors or scores: never a NaN (orjson writes it as null) or an infinity.
VECTOR_ROUTES = ("/v1/embeddings", "/embed", "/", "/similarity")


def vector_problem(body: bytes) -> str | None:
    """Why a 200 of an embedding route is not a JSON of finite numbers, or ``None``."""
    try:
        payload = json.loads(body)
    except ValueError:
        return "not JSON"
    if isinstance(payload, dict):  # OpenAI: base64 strings or float lists under data[].embedding
        payload = [item.get("embedding") for item in payload.get("data", [])]
    stack = [payload]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif item is None or (isinstance(item, float) and not math.isfinite(item)):
            return "a null or non-finite number in the vectors"
    return None


def error_shape_problem(protocol: str, answer: Answer) -> str | None:
    """Why a 4xx body is not the protocol's error shape, or ``None`` (a non-empty message naming the problem)."""
    if not answer.headers.get("content-type", "").startswith("application/json"):
        return f"content-type {answer.headers.get('content-type')!r}"
    try:
        body = json.loads(answer.body)
    except ValueError:
        return "not JSON"
    if protocol == "openai":
        error = body.get("error") if isinstance(body, dict) else None
        if set(body) != {"error"} or not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
            return "not OpenAI's {'error': {'message', 'type', 'param', 'code'}}"
        message, kind = error["message"], error["type"]
        if not (isinstance(message, str) and message and isinstance(kind, str) and isinstance(error["code"], str)):
            return "empty message, type or code"
    else:
        if not isinstance(body, dict) or set(body) != {"error", "error_type"}:
            return "not TEI's {'error', 'error_type'}"
        message = body["error"]
        if not (isinstance(message, str) and message) or body["error_type"] not in TEI_ERROR_TYPES:
            return "empty message or unknown error_type"
    named = {
        415: ("Content-Type", "Content-Encoding"),
        413: ("max_",),
        408: ("body_timeout_s",),
    }.get(answer.status)
    if named and not any(word in message for word in named):
        return f"a {answer.status} whose message names none of {named}"
    return None


@dataclass
class Tally:
    """Counts per class and status, the failures (each with its recipe's repr), and timing."""

    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    classes: Counter = field(default_factory=Counter)
    class_statuses: dict[str, Counter] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[dict[str, Any]] = field(default_factory=list)
    wire_bytes: int = 0
    seconds: float = 0.0

    def record(self, recipe: Recipe, wire: Wire, answers: list[Answer], found: list[str]) -> None:
        self.sent += 1
        self.wire_bytes += len(wire.body)
        status = str(answers[0].status) if answers else "none"
        self.statuses[status] += 1
        for name in recipe.classes():
            self.classes[name] += 1
            self.class_statuses[name][status] += 1
        if found:
            self.failures.append({"recipe": repr(recipe), "problems": found})

    def missing_classes(self) -> list[str]:
        return [name for name in CLASSES if not self.classes[name]]

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.sent,
            "server_errors": sum(n for s, n in self.statuses.items() if s.isdigit() and int(s) >= 500),
            "failures": len(self.failures),
            "statuses": dict(sorted(self.statuses.items())),
            "per_class": {name: self.classes[name] for name in CLASSES},
            "per_class_statuses": {name: dict(sorted(self.class_statuses[name].items())) for name in CLASSES},
            "classes_not_sent": self.missing_classes(),
            "body_bytes_sent": self.wire_bytes,
            "seconds": round(self.seconds, 1),
            "failure_examples": self.failures[:20],
        }


#: Requests in a row without an answer after which the run stops (the server is gone).
STOP_AFTER_SILENT = 10


class ServerGone(RuntimeError):
    """The server stopped answering during a fuzz run."""


def fuzz(url: str, requests: int, seed: int, progress: Callable[[Tally], None] | None = None) -> Tally:
    """Send ``requests`` generated requests to ``url`` (hypothesis with a fixed seed, no shrinking, no example
    database: the same seed sends the same requests) and tally them; failures are collected, not raised."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as fixed_seed

    tally = Tally()
    silent_in_a_row = [0]
    started = time.perf_counter()
    with httpx.Client(timeout=60.0) as client:

        @fixed_seed(seed)
        @settings(
            max_examples=requests,
            deadline=None,
            database=None,
            phases=(Phase.generate,),
            suppress_health_check=list(HealthCheck),
        )
        @given(recipes())
        def one(recipe: Recipe) -> None:
            wire = recipe.wire()
            try:
                answers = send(client, url, wire)
            except (httpx.HTTPError, OSError) as exc:  # httpx drops a broken connection: the next one is new
                answers = []
                found = [f"no answer: {type(exc).__name__}: {exc}"]
            else:
                found = problems(recipe, answers)
            tally.record(recipe, wire, answers, found)
            silent = 0 if answers else silent_in_a_row[0] + 1
            silent_in_a_row[0] = silent
            if silent >= STOP_AFTER_SILENT:
                raise ServerGone(f"no answer to {silent} requests in a row; the last one: {recipe!r}")
            if progress is not None:
                progress(tally)

        one()
    tally.seconds = time.perf_counter() - started
    return tally


def still_serving(url: str) -> str | None:
    """``None`` when the server answers normal requests with the right number of vectors; else what went wrong."""
    texts = ["after the fuzz", "a second text", "and a third"]
    tei = httpx.post(f"{url}/embed", json={"inputs": texts}, timeout=60)
    openai = httpx.post(f"{url}/v1/embeddings", json={"input": texts[:2]}, timeout=60)
    if tei.status_code != 200 or [len(v) for v in tei.json()] != [DIMENSION] * 3:
        return f"/embed: {tei.status_code} {tei.text[:300]}"
    if openai.status_code != 200 or [d["index"] for d in openai.json()["data"]] != [0, 1]:
        return f"/v1/embeddings: {openai.status_code} {openai.text[:300]}"
    return None


def main(argv: Iterable[str] | None = None) -> int:
    import hypothesis

    from benchmarks.bench_http import Server, free_port
    from benchmarks.common import describe_versions, write_results

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--url", help="a running server")
    target.add_argument("--start", action="store_true", help="start `bentoml serve` on a free port")
    parser.add_argument("--model", default="embedserve-all-minilm-l6-v2:latest")
    parser.add_argument("--requests", type=int, default=6000)
    parser.add_argument("--seed", type=int, default=20261128)
    parser.add_argument("--out", help="results JSON (default benchmarks/results/fuzz_hostile.json)")
    args = parser.parse_args(list(argv) if argv is not None else None)

    server = Server(free_port(), args.model) if args.start else None
    url = args.url
    if server is not None:
        server.start()
        url = server.url

    def progress(tally: Tally) -> None:
        if tally.sent % 500 == 0:
            print(f"{tally.sent} requests, statuses {dict(tally.statuses)}, {len(tally.failures)} failures", flush=True)

    log = None
    try:
        info = httpx.get(f"{url}/info", timeout=10).json()
        tally = fuzz(url, args.requests, args.seed, progress)
        after = still_serving(url)
    finally:
        if server is not None:
            log = server.log_path.read_text(errors="replace")
            exited = server.process.poll() if server.process is not None else None
            server.stop()
            if exited is not None:
                print(f"the server exited during the run ({exited}):\n{log[-4000:]}")
    log_faults = None if log is None else log.count("Traceback") + log.count("request failed")
    results = {**tally.summary(), "still_serving_after": after is None, "log_tracebacks": log_faults}
    if after is not None:
        results["still_serving_problem"] = after
    results["passed"] = bool(not tally.failures and after is None and not log_faults and not tally.missing_classes())
    settings = {
        "requests": args.requests,
        "seed": args.seed,
        "model": args.model,
        "server": "started by --start (default settings)" if args.start else url,
        "server_limits": info.get("limits"),
        "workers": info.get("workers"),
        "command": f"python -m benchmarks.fuzz_hostile {'--start' if args.start else '--url URL'} "
        f"--requests {args.requests} --seed {args.seed}",
        "client": f"httpx {httpx.__version__} (correct Content-Length, one kept-alive connection) and raw sockets "
        "(chunked, short Content-Length, odd transfer codings), one request at a time, on the server's machine",
        "strategy": "benchmarks/fuzz_hostile.py recipes(): route x body mutations (0-3) x body transform x "
        "Content-Type x Content-Encoding x framing",
    }
    versions = {**describe_versions(), "hypothesis": hypothesis.__version__}
    path = write_results("fuzz_hostile", settings=settings, results=results, out=args.out, versions=versions)
    print(
        f"fuzz_hostile: {tally.sent} requests in {tally.seconds:.0f}s, statuses {dict(sorted(tally.statuses.items()))}"
        f", {len(tally.failures)} failures, passed={results['passed']} -> {path}"
    )
    return 0 if results["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
