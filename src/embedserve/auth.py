"""Optional API keys: parsed once from ``EMBEDSERVE_API_KEY``, checked against ``Authorization: Bearer <key>``.

``EMBEDSERVE_API_KEY`` takes one of:

* nothing (unset or empty): no key is asked for;
* ``key`` or ``key1,key2,...``: one or several keys, comma-separated (spaces around each are ignored);
* ``@/path/to/file``: a file with one key per line; blank lines and lines starting with ``#`` are ignored, so
  keys can be rotated by adding the new one, restarting, moving clients over, removing the old one.

A key is 1 to 512 visible ASCII characters with no spaces or commas (what fits an HTTP header unchanged). A setting
that asks for keys but yields none (``","``, an empty file) or a file that cannot be read stops start-up: the server
never runs open by mistake. Keys are compared in constant time (:func:`hmac.compare_digest`, against every key) and
never appear in a message, a log line, ``repr`` or ``/info``.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from embedserve.errors import ConfigError

MAX_KEY_LENGTH = 512
_BEARER = b"bearer "


class ApiKeys:
    """The accepted keys (possibly none: then every request is allowed). Immutable; the keys are not shown."""

    __slots__ = ("_keys",)

    def __init__(self, keys: tuple[str, ...] = ()) -> None:
        for number, key in enumerate(keys, 1):
            if not 1 <= len(key) <= MAX_KEY_LENGTH or not all("!" <= c <= "~" and c != "," for c in key):
                raise ConfigError(
                    f"API key number {number} is invalid: a key is 1 to {MAX_KEY_LENGTH} visible ASCII characters "
                    "without spaces or commas"
                )
        object.__setattr__(self, "_keys", tuple(key.encode("ascii") for key in keys))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("ApiKeys is immutable")

    @property
    def required(self) -> bool:
        """Whether requests must carry a key."""
        return bool(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"ApiKeys(<{len(self._keys)} keys>)"

    def __deepcopy__(self, memo: dict) -> ApiKeys:  # immutable (dataclasses.asdict deep-copies fields)
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKeys) and other._keys == self._keys

    def __hash__(self) -> int:
        return hash(self._keys)

    def allows(self, authorization: bytes | None) -> bool:
        """Whether an ``Authorization`` header value (raw bytes, or ``None`` when absent) carries an accepted key.

        The scheme is ``Bearer`` (any case). Every key is compared, in constant time, whatever matched before.
        """
        if not self._keys:
            return True
        if authorization is None or authorization[: len(_BEARER)].lower() != _BEARER:
            return False
        token = authorization[len(_BEARER) :].strip()
        accepted = False
        for key in self._keys:
            accepted |= hmac.compare_digest(key, token)
        return accepted

    @classmethod
    def parse(cls, text: str | None) -> ApiKeys:
        """Keys from the ``EMBEDSERVE_API_KEY`` syntax (see the module docstring).

        Raises:
            ConfigError: the file cannot be read, no key is given where one was asked for, or a key is malformed.
                The message names the file or the key's position, never a key.
        """
        text = (text or "").strip()
        if not text:
            return cls()
        if text.startswith("@"):
            path = Path(text[1:]).expanduser()
            try:
                lines = path.read_text(encoding="utf-8").splitlines()
            except OSError as exc:
                raise ConfigError(f"cannot read the API key file {path}: {exc.strerror}") from None
            except UnicodeDecodeError:  # its message would quote the file's bytes: keys
                raise ConfigError(f"the API key file {path} is not UTF-8 text") from None
            keys = tuple(s for line in lines if (s := line.strip()) and not s.startswith("#"))
            source = f"the API key file {path}"
        else:
            keys = tuple(s for part in text.split(",") if (s := part.strip()))
            source = "the setting"
        if not keys:
            raise ConfigError(f"{source} holds no API key (leave it unset to serve without keys)")
        return cls(keys)
