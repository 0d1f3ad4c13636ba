"""API keys: the EMBEDSERVE_API_KEY syntax, the Bearer check, and that a key is never shown."""

from __future__ import annotations

import pytest

from embedserve.auth import ApiKeys
from embedserve.config import Settings
from embedserve.errors import ConfigError

SECRET = "sk-test-9f8e7d6c5b4a"


def test_unset_or_empty_means_no_key_required():
    for text in (None, "", "   "):
        keys = ApiKeys.parse(text)
        assert not keys.required and len(keys) == 0
        assert keys.allows(None) and keys.allows(b"Bearer anything")
    assert not Settings.from_env({}).api_keys.required


def test_one_key_or_several_comma_separated():
    assert len(ApiKeys.parse(SECRET)) == 1
    keys = ApiKeys.parse(f" {SECRET} , second-key,,third ")
    assert len(keys) == 3
    for key in (SECRET, "second-key", "third"):
        assert keys.allows(b"Bearer " + key.encode())
    assert not keys.allows(b"Bearer fourth")


def test_key_file_one_per_line_with_comments(tmp_path):
    path = tmp_path / "keys"
    path.write_text(f"# rotated 2026-11\n{SECRET}\n\n  old-key  \n#disabled-key\n")
    keys = ApiKeys.parse(f"@{path}")
    assert len(keys) == 2
    assert keys.allows(b"Bearer old-key") and keys.allows(f"Bearer {SECRET}".encode())
    assert not keys.allows(b"Bearer disabled-key") and not keys.allows(b"Bearer #disabled-key")


def test_bearer_check():
    keys = ApiKeys.parse(SECRET)
    assert keys.allows(f"Bearer {SECRET}".encode())
    assert keys.allows(f"bearer {SECRET}".encode())  # the scheme is case-insensitive (RFC 7235)
    assert keys.allows(f"Bearer {SECRET}  ".encode())
    assert not keys.allows(None)
    assert not keys.allows(b"")
    assert not keys.allows(SECRET.encode())  # no scheme
    assert not keys.allows(f"Basic {SECRET}".encode())
    assert not keys.allows(f"Bearer {SECRET}x".encode())
    assert not keys.allows(f"Bearer {SECRET[:-1]}".encode())
    assert not keys.allows(b"Bearer ")
    assert not keys.allows("Bearer sk-tést".encode())  # non-ASCII bytes compare, never raise


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (",", "holds no API key"),
        (" , ,", "holds no API key"),
        ("good,bad key", "API key number 2 is invalid"),
        ("clé", "API key number 1 is invalid"),
        ("k" * 513, "1 to 512"),
    ],
)
def test_bad_settings_stop_start_up_without_showing_a_key(text, fragment):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"EMBEDSERVE_API_KEY": text})
    message = str(info.value)
    assert fragment in message and "EMBEDSERVE_API_KEY" in message
    assert "bad key" not in message and "clé" not in message and "k" * 20 not in message


def test_key_file_errors_name_the_file_not_its_contents(tmp_path):
    with pytest.raises(ConfigError, match=r"cannot read the API key file .*missing"):
        ApiKeys.parse(f"@{tmp_path / 'missing'}")
    empty = tmp_path / "empty"
    empty.write_text("# no keys yet\n\n")
    with pytest.raises(ConfigError, match="holds no API key"):
        ApiKeys.parse(f"@{empty}")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe" + SECRET.encode())
    with pytest.raises(ConfigError, match="not UTF-8") as info:
        ApiKeys.parse(f"@{binary}")
    assert SECRET not in str(info.value) and info.value.__cause__ is None


def test_a_key_is_never_shown():
    settings = Settings.from_env({"EMBEDSERVE_API_KEY": SECRET})
    assert settings.api_keys.required
    assert SECRET not in repr(settings) and SECRET not in str(settings.as_dict())
    assert settings.as_dict()["api_keys"] == 1
    with pytest.raises(AttributeError):
        settings.api_keys._keys = ()  # type: ignore[misc]
