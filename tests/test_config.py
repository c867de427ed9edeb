"""Tests of the config model and its loaders: files, environment, .env, arguments, validation."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import subprocess
import sys
import traceback
from pathlib import Path

import pytest
from conftest import InProcessCli

from openai_parallel_toolkit import APIKeyManager
from openai_parallel_toolkit.config import (
    KeyConfig,
    ToolkitConfig,
    config_from_env,
    config_from_keys,
    config_from_mapping,
    load_config,
)
from openai_parallel_toolkit.errors import ConfigError, mask_key

REPO_ROOT = Path(__file__).resolve().parent.parent


def _key(n: int) -> str:
    """A realistic, distinct project key: ``sk-proj-`` and 40 characters."""
    return "sk-proj-" + hashlib.sha256(f"key {n}".encode()).hexdigest()[:40]


K1, K2, K3, K4 = _key(1), _key(2), _key(3), _key(4)
ALL_KEYS = (K1, K2, K3, K4)


def _write(tmp_path: Path, name: str, content: str | dict[str, object]) -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def _assert_no_full_key(exc: BaseException) -> None:
    """Neither the message nor anything in the traceback chain may show a whole key."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    for key in ALL_KEYS:
        assert key not in text
        assert key[:-4] not in text  # not even most of it


# --- files: accepted forms --------------------------------------------------------------------


def test_seed_json_form(tmp_path: Path) -> None:
    path = _write(tmp_path, "config.json", {"api_keys": [K1, K2], "api_base": "https://x.test/v1/"})
    config = load_config(path)
    assert config.source == str(path)
    assert config.api_base == "https://x.test/v1"
    assert [key.api_key for key in config.keys] == [K1, K2]
    assert all(key.api_base == "https://x.test/v1" for key in config.keys)
    assert config.keys[1].source == f"{path}: api_keys[1]"
    assert config.keys[0].requests_per_min is None
    assert config.keys[0].proxy is None


def test_seed_json_without_api_base(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "config.json", {"api_keys": [K1]}))
    assert config.api_base is None
    assert config.keys[0].api_base is None


def test_source_is_the_path_as_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "config.json", {"api_keys": [K1]})
    monkeypatch.chdir(tmp_path)
    config = load_config("config.json")
    assert config.source == "config.json"
    assert config.keys[0].source == "config.json: api_keys[0]"


def test_object_entries_with_defaults_and_overrides(tmp_path: Path) -> None:
    data = {
        "api_base": "https://default.test/v1",
        "proxy": "http://127.0.0.1:7890",
        "organization": "org-default",
        "project": "proj_default",
        "requests_per_min": 60,
        "tokens_per_min": 1000.5,
        "api_keys": [
            K1,
            {
                "api_key": K2,
                "api_base": "http://own.test/v1/",
                "proxy": "socks5h://127.0.0.1:1080",
                "organization": "org-own",
                "project": "proj_own",
                "requests_per_min": 500,
                "tokens_per_min": 200000,
                "limit_group": "team",
            },
            {"api_key": K3, "tokens_per_min": 5, "proxy": None},
        ],
    }
    config = load_config(_write(tmp_path, "keys.json", data))
    first, second, third = config.keys
    assert first.api_base == "https://default.test/v1"
    assert first.proxy == "http://127.0.0.1:7890"
    assert first.organization == "org-default"
    assert first.project == "proj_default"
    assert first.requests_per_min == 60.0
    assert isinstance(first.requests_per_min, float)
    assert first.tokens_per_min == 1000.5
    assert first.limit_group is None
    assert second == KeyConfig(
        api_key=K2,
        api_base="http://own.test/v1",
        proxy="socks5h://127.0.0.1:1080",
        organization="org-own",
        project="proj_own",
        requests_per_min=500.0,
        tokens_per_min=200000.0,
        limit_group="team",
        source=second.source,
    )
    # null means "not given": the default applies
    assert third.proxy == "http://127.0.0.1:7890"
    assert third.requests_per_min == 60.0
    assert third.tokens_per_min == 5.0


@pytest.mark.parametrize("name", ["config.yaml", "config.yml", "CONFIG.YAML"])
def test_yaml_api_keys_form(tmp_path: Path, name: str) -> None:
    text = f"""
api_base: https://x.test/v1/
requests_per_min: 60
api_keys:
  - {K1}
  - api_key: {K2}
    proxy: http://127.0.0.1:7890
    tokens_per_min: 1.5e5
    limit_group: shared
"""
    config = load_config(_write(tmp_path, name, text))
    assert [key.api_key for key in config.keys] == [K1, K2]
    assert config.api_base == "https://x.test/v1"
    assert config.keys[0].requests_per_min == 60.0
    # YAML 1.1 would read 1.5e5 as text; a config of rate limits must read it as a number
    assert config.keys[1].tokens_per_min == 150000.0
    assert config.keys[1].proxy == "http://127.0.0.1:7890"
    assert config.keys[1].group == "shared"
    assert config.keys[1].source == f"{tmp_path / name}: api_keys[1]"


def test_yaml_openai_manager_auth_blocks(tmp_path: Path) -> None:
    text = f"""
proxy: http://127.0.0.1:9999
auth_1:
  api_key: {K1}
  proxy: http://127.0.0.1:7890
  requests_per_min: 60
  tokens_per_min: 150000
auth_2:
  api_key: {K2}
my-third-key:
  api_key: {K3}
  organization: org-x
"""
    path = _write(tmp_path, "manager.yaml", text)
    config = load_config(path)
    assert [key.api_key for key in config.keys] == [K1, K2, K3]
    assert config.keys[0].proxy == "http://127.0.0.1:7890"
    assert config.keys[0].requests_per_min == 60.0
    assert config.keys[0].tokens_per_min == 150000.0
    assert config.keys[1].proxy == "http://127.0.0.1:9999"
    assert config.keys[1].requests_per_min is None
    assert config.keys[2].organization == "org-x"
    assert config.keys[0].source == f"{path}: auth_1"
    assert config.keys[2].source == f"{path}: my-third-key"


def test_yaml_merge_keys_may_be_overridden(tmp_path: Path) -> None:
    text = f"""
auth_1: &base
  api_key: {K1}
  requests_per_min: 60
auth_2:
  <<: *base
  api_key: {K2}
"""
    config = load_config(_write(tmp_path, "anchors.yaml", text))
    assert [key.api_key for key in config.keys] == [K1, K2]
    assert config.keys[1].requests_per_min == 60.0


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("keys.conf", json.dumps({"api_keys": [K1]})),
        ("keys", f"api_keys:\n  - {K1}\n"),
        ("keys.txt", f"auth_1:\n  api_key: {K1}\n"),
    ],
)
def test_other_extensions_try_json_then_yaml(tmp_path: Path, name: str, text: str) -> None:
    assert load_config(_write(tmp_path, name, text)).keys[0].api_key == K1


def test_json_with_byte_order_mark(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"api_keys": [K1]}).encode())
    assert load_config(path).keys[0].api_key == K1


def test_config_from_mapping() -> None:
    config = config_from_mapping({"api_keys": [K1]}, source="inline")
    assert config.source == "inline"
    assert config.keys[0].source == "inline: api_keys[0]"


# --- files: every bad case --------------------------------------------------------------------

# (id, file name, content, field the error must name, text the message must contain)
BAD_FILES: list[tuple[str, str, str | dict[str, object], str, str]] = [
    ("empty list", "c.json", {"api_keys": []}, "api_keys", "no API keys"),
    ("no blocks", "c.yaml", "api_base: https://x.test/v1\n", "api_keys", "no API keys"),
    ("empty mapping", "c.json", {}, "api_keys", "no API keys"),
    ("api_keys not a list", "c.json", {"api_keys": K1}, "api_keys", "must be a list"),
    ("api_keys null", "c.yaml", "api_keys:\n", "api_keys", "must be a list"),
    ("entry of wrong type", "c.json", {"api_keys": [K1, 5]}, "api_keys[1]", "string or a mapping"),
    ("entry is a list", "c.json", {"api_keys": [[K1]]}, "api_keys[0]", "string or a mapping"),
    (
        "api_key missing",
        "c.json",
        {"api_keys": [K1, {"proxy": "http://p.test:1"}]},
        "api_keys[1].api_key",
        "missing required field 'api_key'",
    ),
    ("api_key empty string", "c.json", {"api_keys": [K1, ""]}, "api_keys[1]", "empty"),
    (
        "api_key empty in mapping",
        "c.json",
        {"api_keys": [{"api_key": ""}]},
        "api_keys[0].api_key",
        "empty",
    ),
    (
        "api_key not a string",
        "c.json",
        {"api_keys": [{"api_key": 12345}]},
        "api_keys[0].api_key",
        "must be a string",
    ),
    ("api_key trailing space", "c.json", {"api_keys": [K1 + " "]}, "api_keys[0]", "whitespace"),
    (
        "api_key inner whitespace",
        "c.json",
        {"api_keys": [{"api_key": K1[:20] + "\n" + K1[20:]}]},
        "api_keys[0].api_key",
        "whitespace",
    ),
    (
        "limit as text",
        "c.json",
        {"api_keys": [{"api_key": K1, "requests_per_min": "60"}]},
        "api_keys[0].requests_per_min",
        "write 60 without quotes",
    ),
    (
        "limit as bool",
        "c.yaml",
        f"api_keys:\n  - api_key: {K1}\n    tokens_per_min: yes\n",
        "api_keys[0].tokens_per_min",
        "must be a number, got a boolean",
    ),
    (
        "limit zero",
        "c.json",
        {"api_keys": [K1, K2, {"api_key": K3, "requests_per_min": 0}]},
        "api_keys[2].requests_per_min",
        "must be > 0, got 0; leave it out to learn limits from response headers",
    ),
    (
        "limit negative",
        "c.json",
        {"api_keys": [{"api_key": K1, "tokens_per_min": -5.5}]},
        "api_keys[0].tokens_per_min",
        "must be > 0",
    ),
    (
        "limit not finite",
        "c.yaml",
        f"api_keys:\n  - api_key: {K1}\n    tokens_per_min: .inf\n",
        "api_keys[0].tokens_per_min",
        "finite",
    ),
    (
        "default limit zero",
        "c.json",
        {"api_keys": [K1], "tokens_per_min": 0},
        "tokens_per_min",
        "must be > 0",
    ),
    ("api_base not a string", "c.json", {"api_keys": [K1], "api_base": 1}, "api_base", "string"),
    (
        "api_base bad scheme",
        "c.json",
        {"api_keys": [K1], "api_base": "ftp://x.test/v1"},
        "api_base",
        "must start with one of http://, https://, got ftp://",
    ),
    (
        "api_base without scheme",
        "c.json",
        {"api_keys": [{"api_key": K1, "api_base": "api.openai.com/v1"}]},
        "api_keys[0].api_base",
        "must start with one of http://, https://",
    ),
    (
        "api_base without host",
        "c.json",
        {"api_keys": [K1], "api_base": "https://"},
        "api_base",
        "no host",
    ),
    (
        "proxy bad scheme",
        "c.json",
        {"api_keys": [K1, {"api_key": K2, "proxy": "socks4://127.0.0.1:1080"}]},
        "api_keys[1].proxy",
        "socks5://, socks5h://",
    ),
    (
        "proxy bad in auth block",
        "c.yaml",
        f"auth_1:\n  api_key: {K1}\n  proxy: 127.0.0.1:7890\n",
        "auth_1.proxy",
        "must start with one of http://",
    ),
    (
        "limit as text in auth block",
        "c.yaml",
        f"auth_1:\n  api_key: {K1}\nauth_2:\n  api_key: {K2}\n  requests_per_min: '60'\n",
        "auth_2.requests_per_min",
        "must be a number",
    ),
    (
        "auth block without api_key",
        "c.yaml",
        f"auth_1:\n  api_key: {K1}\nauth_2:\n  proxy: http://p.test:1\n",
        "auth_2.api_key",
        "missing required field 'api_key'",
    ),
    (
        "unknown field in entry",
        "c.json",
        {"api_keys": [{"api_key": K1, "request_per_min": 60}]},
        "api_keys[0].request_per_min",
        "unknown field 'request_per_min' (did you mean 'requests_per_min'?)",
    ),
    (
        "unknown top-level field",
        "c.json",
        {"api_key": [K1]},
        "api_key",
        "unknown field 'api_key' (did you mean 'api_keys'?)",
    ),
    (
        "unknown top-level next to api_keys",
        "c.json",
        {"api_keys": [K1], "retries": 3},
        "retries",
        "unknown field 'retries'",
    ),
    (
        "unknown scalar in auth form",
        "c.yaml",
        f"proxies: http://p.test:1\nauth_1:\n  api_key: {K1}\n",
        "proxies",
        "unknown field 'proxies' (did you mean 'proxy'?)",
    ),
    (
        "auth block a string",  # was "unknown field 'auth_1'" (issue 13)
        "c.yaml",
        f"auth_1: {K1}\n",
        "auth_1",
        "a key block must be a mapping with 'api_key', like 'auth_1: {api_key: sk-...",
    ),
    (
        "auth block a number",
        "c.yaml",
        f"auth_1:\n  api_key: {K1}\nauth_2: 5\n",
        "auth_2",
        "got an integer",
    ),
    (
        "unknown field in auth block",
        "c.yaml",
        f"auth_1:\n  api_key: {K1}\n  tokens_per_minute: 5\n",
        "auth_1.tokens_per_minute",
        "did you mean 'tokens_per_min'?",
    ),
    (
        "limit_group empty",
        "c.json",
        {"api_keys": [{"api_key": K1, "limit_group": " "}]},
        "api_keys[0].limit_group",
        "must not be empty",
    ),
    (
        "organization not a string",
        "c.json",
        {"api_keys": [K1], "organization": 7},
        "organization",
        "must be a string",
    ),
    (
        "same key twice",
        "c.json",
        {"api_keys": [K1, K2, {"api_key": K1}]},
        "api_keys[2]",
        f"the same API key {mask_key(K1)} is listed twice: at api_keys[0] and at api_keys[2]",
    ),
    (
        "same key twice in auth form",
        "c.yaml",
        f"auth_1:\n  api_key: {K2}\nauth_2:\n  api_key: {K2}\n",
        "auth_2",
        "at auth_1 and at auth_2",
    ),
    (
        "duplicate field in JSON",
        "c.json",
        f'{{"api_keys": ["{K1}"], "api_keys": ["{K2}"]}}',
        "api_keys",
        "appears twice",
    ),
    (
        "duplicate block in YAML",
        "c.yaml",
        f"auth_1:\n  api_key: {K1}\nauth_1:\n  api_key: {K2}\n",
        "auth_1",
        "appears twice in one mapping (line 3)",
    ),
]


@pytest.mark.parametrize(
    ("name", "content", "field", "expected"),
    [case[1:] for case in BAD_FILES],
    ids=[case[0] for case in BAD_FILES],
)
def test_bad_config_names_file_and_field(
    tmp_path: Path, name: str, content: str | dict[str, object], field: str, expected: str
) -> None:
    path = _write(tmp_path, name, content)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert f"field {field!r}" in message
    assert expected in message
    assert info.value.source == str(path)
    assert info.value.field == field
    _assert_no_full_key(info.value)


# (id, file name, raw bytes or None to not create the file, text the message must contain)
BAD_FILE_LEVEL: list[tuple[str, str, bytes | None, str]] = [
    ("missing file", "absent.json", None, "file not found"),
    ("not UTF-8", "c.json", b'{"api_keys": ["\xff\xfe"]}', "not UTF-8"),
    ("empty YAML", "c.yaml", b"", "the file is empty"),
    ("empty JSON", "c.json", b"", "the file is empty"),  # was "Expecting value" (issue 13)
    ("blank JSON", "c.json", b" \n\t\n", "the file is empty"),
    ("empty, unknown extension", "c.cfg", b"", "the file is empty"),
    ("YAML of comments only", "c.yml", b"# keys: none yet\n", "the file is empty"),
    (
        "broken JSON",
        "c.json",
        f'{{\n  "api_keys": [\n    "{K1}"\n    "{K2}"\n  ]\n}}'.encode(),
        "invalid JSON at line 4, column 5: Expecting ',' delimiter",
    ),
    (
        "broken YAML",
        "c.yaml",
        f"api_keys:\n  - {K1}\n - {K2}: [\n".encode(),
        "invalid YAML at line 3, column 2",
    ),
    ("broken YAML with key on the line", "c.yml", f"a: b: {K1}\n".encode(), "invalid YAML at line"),
    ("broken, unknown extension, JSON-like", "c.cfg", b'{"api_keys": [,]}', "invalid JSON"),
    ("broken, unknown extension, YAML-like", "c.cfg", b"a: [\n", "invalid YAML"),
    ("top level a list", "c.json", json.dumps([K1, K2]).encode(), "top level must be a mapping"),
    ("top level a string", "c.yaml", K1.encode(), "top level must be a mapping"),
]


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [case[1:] for case in BAD_FILE_LEVEL],
    ids=[case[0] for case in BAD_FILE_LEVEL],
)
def test_unusable_file_names_the_file(
    tmp_path: Path, name: str, raw: bytes | None, expected: str
) -> None:
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert expected in str(info.value)
    assert info.value.field is None
    _assert_no_full_key(info.value)


def test_directory_is_not_a_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is a directory") as info:
        load_config(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    # A directory in place of the file: unreadable even for root, unlike chmod 0.
    path = tmp_path / "c.json"
    path.mkdir()
    with pytest.raises(ConfigError, match="is a directory") as info:
        load_config(path)
    assert "c.json" in str(info.value)


def test_file_not_found_is_a_value_error(tmp_path: Path) -> None:
    # ConfigError is a ValueError too, so callers catching ValueError keep working
    with pytest.raises(ValueError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_proxy_password_not_echoed(tmp_path: Path) -> None:
    path = _write(tmp_path, "c.json", {"api_keys": [K1], "proxy": "ftp://user:hunter2@p.test:1"})
    with pytest.raises(ConfigError, match="got ftp://") as info:
        load_config(path)
    assert "hunter2" not in str(info.value)


# --- environment ------------------------------------------------------------------------------


def test_env_keys_in_natural_order_with_proxies_and_base_url() -> None:
    environ = {
        "OPENAI_API_KEY_10": K4,
        "OPENAI_API_KEY_2": K3,
        "OPENAI_API_KEY": K1,
        "OPENAI_API_KEY_1": K2,
        "OPENAI_API_KEY_3": "",  # empty: ignored
        "OPENAI_API_PROXY": "http://default.proxy:3128",
        "OPENAI_API_PROXY_2": "socks5://own.proxy:1080",
        "OPENAI_API_PROXY_3": "http://orphan.proxy:1",  # its key is empty: ignored
        "OPENAI_BASE_URL": "https://base.test/v1/",
        "OPENAI_ORG_ID": "org-abc",
        "OPENAI_PROJECT_ID": "proj_abc",
        "UNRELATED": "x",
    }
    config = config_from_env(environ)
    assert config.source == "environment"
    assert config.api_base == "https://base.test/v1"
    assert [key.api_key for key in config.keys] == [K1, K2, K3, K4]
    assert [key.source for key in config.keys] == [
        "environment: OPENAI_API_KEY",
        "environment: OPENAI_API_KEY_1",
        "environment: OPENAI_API_KEY_2",
        "environment: OPENAI_API_KEY_10",
    ]
    assert [key.proxy for key in config.keys] == [
        "http://default.proxy:3128",
        "http://default.proxy:3128",
        "socks5://own.proxy:1080",
        "http://default.proxy:3128",
    ]
    for key in config.keys:
        assert key.api_base == "https://base.test/v1"
        assert key.organization == "org-abc"
        assert key.project == "proj_abc"
        assert key.requests_per_min is None
        assert key.limit_group is None


def test_env_older_base_url_name_and_precedence() -> None:
    old = config_from_env({"OPENAI_API_KEY_1": K1, "OPENAI_API_BASE": "http://old.test/v1"})
    assert old.keys[0].api_base == "http://old.test/v1"
    both = config_from_env(
        {
            "OPENAI_API_KEY_1": K1,
            "OPENAI_API_BASE": "http://old.test/v1",
            "OPENAI_BASE_URL": "http://new.test/v1",
        }
    )
    assert both.api_base == "http://new.test/v1"


def test_env_without_proxy_or_base() -> None:
    config = config_from_env({"OPENAI_API_KEY": K1})
    assert config.keys[0].proxy is None
    assert config.keys[0].api_base is None
    assert config.api_base is None


def test_env_from_the_real_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OPENAI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY_1", K1)
    monkeypatch.setenv("OPENAI_API_KEY_2", K2)
    monkeypatch.setenv("OPENAI_API_PROXY_1", "http://127.0.0.1:7890")
    config = config_from_env()
    assert [key.api_key for key in config.keys] == [K1, K2]
    assert [key.proxy for key in config.keys] == ["http://127.0.0.1:7890", None]


def test_env_no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_env({"OPENAI_API_KEY": "", "OPENAI_BASE_URL": "https://x.test/v1"})
    assert info.value.source == "environment"
    assert info.value.field == "OPENAI_API_KEY"
    assert "environment" in str(info.value)
    assert "'OPENAI_API_KEY'" in str(info.value)


@pytest.mark.parametrize(
    ("environ", "field", "expected"),
    [
        (
            {"OPENAI_API_KEY_1": K1, "OPENAI_API_PROXY_1": "ftp://p.test"},
            "OPENAI_API_PROXY_1",
            "ftp",
        ),
        ({"OPENAI_API_KEY_1": K1, "OPENAI_API_PROXY": "p.test:1"}, "OPENAI_API_PROXY", "scheme"),
        ({"OPENAI_API_KEY_1": K1, "OPENAI_BASE_URL": "x.test/v1"}, "OPENAI_BASE_URL", "http://"),
        ({"OPENAI_API_KEY_1": K1 + "\n"}, "OPENAI_API_KEY_1", "whitespace"),
        (
            {"OPENAI_API_KEY_1": K1, "OPENAI_API_KEY_7": K1},
            "OPENAI_API_KEY_7",
            "at OPENAI_API_KEY_1 and at OPENAI_API_KEY_7",
        ),
    ],
)
def test_env_bad_values(environ: dict[str, str], field: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_env(environ)
    assert info.value.source == "environment"
    assert info.value.field == field
    assert expected in str(info.value)
    _assert_no_full_key(info.value)


def _dotenv(tmp_path: Path) -> Path:
    path = tmp_path / ".env"
    path.write_text(
        "# keys for the tests\n"
        f"OPENAI_API_KEY_1={K1}\n"
        f"OPENAI_API_KEY_2={K2}\n"
        "OPENAI_API_PROXY_2=http://from.dotenv:1\n"
        "OPENAI_BASE_URL=https://dotenv.test/v1\n",
        encoding="utf-8",
    )
    return path


def test_dotenv_path_is_read_and_environment_wins(tmp_path: Path) -> None:
    path = _dotenv(tmp_path)
    before = dict(os.environ)
    config = config_from_env(
        {"OPENAI_API_KEY_2": K3, "OPENAI_BASE_URL": "", "OPENAI_API_KEY_10": K4}, dotenv=path
    )
    assert dict(os.environ) == before
    assert [key.api_key for key in config.keys] == [K1, K3, K4]
    assert config.keys[0].source == f"{path}: OPENAI_API_KEY_1"
    assert config.keys[1].source == "environment: OPENAI_API_KEY_2"
    assert config.keys[1].proxy == "http://from.dotenv:1"
    # an empty value in the environment counts as unset
    assert config.api_base == "https://dotenv.test/v1"


def test_dotenv_true_reads_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _dotenv(tmp_path)
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("OPENAI_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OPENAI_API_KEY_1", K3)
    config = config_from_env(dotenv=True)
    assert [key.api_key for key in config.keys] == [K3, K2]
    assert os.environ["OPENAI_API_KEY_1"] == K3
    assert "OPENAI_API_KEY_2" not in os.environ
    assert "OPENAI_BASE_URL" not in os.environ


@pytest.mark.parametrize("dotenv", [None, False])
def test_dotenv_not_read_unless_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dotenv: bool | None
) -> None:
    _dotenv(tmp_path)
    monkeypatch.chdir(tmp_path)
    config = config_from_env({"OPENAI_API_KEY": K4}, dotenv=dotenv)
    assert [key.api_key for key in config.keys] == [K4]


def test_dotenv_true_without_a_file_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert config_from_env({"OPENAI_API_KEY": K1}, dotenv=True).keys[0].api_key == K1


def test_dotenv_missing_path(tmp_path: Path) -> None:
    path = tmp_path / "missing.env"
    with pytest.raises(ConfigError, match="does not exist") as info:
        config_from_env({"OPENAI_API_KEY": K1}, dotenv=path)
    assert str(path) in str(info.value)


def test_dotenv_bad_value_names_the_dotenv_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.env"
    path.write_text(f"OPENAI_API_KEY={K1}\nOPENAI_API_PROXY=proxy.test:1\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        config_from_env({}, dotenv=path)
    assert info.value.source == str(path)
    assert info.value.field == "OPENAI_API_PROXY"


def test_no_keys_mentions_the_dotenv_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.env"
    path.write_text("OTHER=1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"empty\.env") as info:
        config_from_env({}, dotenv=path)
    assert info.value.field == "OPENAI_API_KEY"


# --- arguments --------------------------------------------------------------------------------


def test_config_from_keys() -> None:
    own = KeyConfig(api_key=K3, proxy="http://p.test:1")
    config = config_from_keys(
        [K1, {"api_key": K2, "requests_per_min": 10}, own], api_base="https://x.test/v1/"
    )
    assert config.source == "arguments"
    assert config.api_base == "https://x.test/v1"
    assert [key.api_key for key in config.keys] == [K1, K2, K3]
    assert all(key.api_base == "https://x.test/v1" for key in config.keys)
    assert config.keys[1].requests_per_min == 10.0
    assert config.keys[0].source == "arguments: api_keys[0]"
    assert config.keys[2].proxy == "http://p.test:1"
    assert config.keys[2].source == "arguments: api_keys[2]"


def test_config_from_keys_keeps_own_api_base() -> None:
    own = KeyConfig(api_key=K1, api_base="http://own.test", source="mine")
    key = config_from_keys([own], api_base="https://default.test").keys[0]
    assert key.api_base == "http://own.test"
    assert key.source == "mine"


@pytest.mark.parametrize(
    ("api_keys", "kwargs", "field", "expected"),
    [
        (K1, {}, "api_keys", "must be a list"),
        ([], {}, "api_keys", "no API keys"),
        ([K1, {"api_key": K2, "tokens_per_min": 0}], {}, "api_keys[1].tokens_per_min", "> 0"),
        ([K1, K1], {}, "api_keys[1]", "listed twice"),
        ([K1, None], {}, "api_keys[1]", "string or a mapping"),
        ([K1], {"api_base": "localhost:8000"}, "api_base", "http://"),
    ],
)
def test_config_from_keys_validates(
    api_keys: object, kwargs: dict[str, str], field: str, expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_keys(api_keys, **kwargs)  # type: ignore[arg-type]
    assert info.value.source == "arguments"
    assert info.value.field == field
    assert expected in str(info.value)
    _assert_no_full_key(info.value)


def test_config_from_keys_custom_source() -> None:
    with pytest.raises(ConfigError, match=r"^APIKeyManager, field 'api_keys\[0\]'"):
        config_from_keys([""], source="APIKeyManager")


# --- the model itself -------------------------------------------------------------------------


def test_key_repr_and_str_mask_the_key() -> None:
    key = KeyConfig(
        api_key=K1,
        proxy="http://user:secret@proxy.test:8080/",
        requests_per_min=60,
        source="config.json: api_keys[0]",
    )
    for text in (repr(key), str(key), f"{key}"):
        assert K1 not in text
        assert K1[:-4] not in text
        assert mask_key(K1) in text
        assert "secret" not in text
        assert "proxy.test:8080" in text
        assert "requests_per_min=60.0" in text
        assert "config.json: api_keys[0]" in text
    assert key.masked_key == mask_key(K1)
    assert key.masked_key.startswith("sk-..." + K1[-4:] + "#")


def test_toolkit_config_repr_masks_keys(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "c.json", {"api_keys": [K1, K2]}))
    text = repr(config)
    for key in (K1, K2):
        assert key not in text
        assert mask_key(key) in text
    assert K1 not in str(config)


def test_group_defaults_are_distinct_and_hide_the_key() -> None:
    first, second = KeyConfig(api_key=K1), KeyConfig(api_key=K2)
    assert first.group != second.group
    assert first.group == KeyConfig(api_key=K1).group  # stable
    for key in (first, second):
        assert key.api_key not in key.group
        assert key.api_key[:-4] not in key.group
    # keys whose visible tails coincide still get distinct groups
    twin_a, twin_b = "sk-proj-" + "a" * 36 + "wxyz", "sk-proj-" + "b" * 36 + "wxyz"
    assert KeyConfig(api_key=twin_a).group != KeyConfig(api_key=twin_b).group


def test_shared_limit_group() -> None:
    config = config_from_keys(
        [
            {"api_key": K1, "limit_group": "project-a"},
            {"api_key": K2, "limit_group": "project-a"},
            K3,
        ]
    )
    assert config.keys[0].group == config.keys[1].group == "project-a"
    assert config.keys[2].group not in ("project-a", config.keys[0].group)


def test_key_config_is_frozen_and_keyword_only() -> None:
    key = KeyConfig(api_key=K1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        key.api_key = K2  # type: ignore[misc]
    with pytest.raises(TypeError):
        KeyConfig(K1)  # type: ignore[misc]
    assert not hasattr(key, "__dict__")
    assert [f.name for f in dataclasses.fields(KeyConfig)] == [
        "api_key",
        "api_base",
        "proxy",
        "organization",
        "project",
        "requests_per_min",
        "tokens_per_min",
        "limit_group",
        "timeout",
        "source",
    ]
    assert [f.name for f in dataclasses.fields(ToolkitConfig)] == [
        "keys",
        "source",
        "api_base",
        "shared_state",
        "prices",
    ]


def test_key_config_validates_direct_construction() -> None:
    assert KeyConfig(api_key=K1, api_base="https://x.test/v1/").api_base == "https://x.test/v1"
    assert KeyConfig(api_key=K1, tokens_per_min=5).tokens_per_min == 5.0
    with pytest.raises(ConfigError, match="requests_per_min"):
        KeyConfig(api_key=K1, requests_per_min=0)
    with pytest.raises(ConfigError, match="whitespace"):
        KeyConfig(api_key=f" {K1}")
    with pytest.raises(ConfigError, match=r"^mine, field 'proxy'"):
        KeyConfig(api_key=K1, proxy="127.0.0.1:1", source="mine")


def test_toolkit_config_direct_construction() -> None:
    config = ToolkitConfig(keys=[KeyConfig(api_key=K1)], source="test")  # type: ignore[arg-type]
    assert isinstance(config.keys, tuple)
    with pytest.raises(ConfigError, match="no API keys"):
        ToolkitConfig(keys=(), source="test")
    with pytest.raises(ConfigError, match="listed twice"):
        ToolkitConfig(keys=(KeyConfig(api_key=K1), KeyConfig(api_key=K1)), source="test")


def test_configs_pickle_for_worker_processes(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, "c.json", {"api_keys": [K1, {"api_key": K2}]}))
    copy = pickle.loads(pickle.dumps(config))
    assert copy == config
    assert copy.keys[1].api_key == K2
    assert hash(copy.keys[0]) == hash(config.keys[0])


# --- examples and import ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["config.example.json", "config.example.yaml"])
def test_example_files_load(name: str) -> None:
    config = load_config(REPO_ROOT / name)
    assert len(config.keys) >= 2
    assert all(key.api_key.startswith("sk-your-key-") for key in config.keys)
    assert len({key.group for key in config.keys}) >= 2


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    _dotenv(tmp_path)
    code = (
        "import logging, os\n"
        "before = dict(os.environ)\n"
        "import openai_parallel_toolkit.config\n"
        "assert dict(os.environ) == before, 'environment changed'\n"
        "assert not logging.getLogger().handlers, 'root logging configured'\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


# --- keys the HTTP stack cannot send ----------------------------------------------------------

# (id, the bad key, its 1-based position, the code point named in the message)
UNSENDABLE_KEYS = [
    ("zero-width space", K1[:12] + "\u200b" + K1[12:], 13, "U+200B (ZERO WIDTH SPACE)"),
    ("accented letter", K2[:-1] + "é", len(K2), "U+00E9 (LATIN SMALL LETTER E WITH ACUTE)"),
    ("Cyrillic look-alike", "sk-proj-" + "\u0430" + K3[9:], 9, "U+0430 (CYRILLIC SMALL LETTER A)"),
    ("control character", K4[:20] + "\x07" + K4[20:], 21, "U+0007"),
]


def _assert_names_position_not_key(exc: ConfigError, bad: str, position: int, char: str) -> None:
    message = str(exc)
    assert f"character {position} of {len(bad)} is {char}" in message
    assert "cannot be sent in an HTTP header" in message
    assert bad not in message and bad[:-4] not in message and bad[4:] not in message
    _assert_no_full_key(exc)


@pytest.mark.parametrize(
    ("bad", "position", "char"),
    [case[1:] for case in UNSENDABLE_KEYS],
    ids=[case[0] for case in UNSENDABLE_KEYS],
)
def test_unsendable_key_in_a_file_names_file_entry_and_position(
    tmp_path: Path, bad: str, position: int, char: str
) -> None:
    path = _write(tmp_path, "keys.json", {"api_keys": [_key(5), {"api_key": bad}]})
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    assert info.value.field == "api_keys[1].api_key"
    assert str(info.value).startswith(f"{path}, field 'api_keys[1].api_key': ")
    _assert_names_position_not_key(info.value, bad, position, char)

    yaml_path = _write(tmp_path, "keys.yaml", f"auth_1:\n  api_key: {_key(5)}\nauth_2:\n")
    with yaml_path.open("a", encoding="utf-8") as file:
        file.write(f"  api_key: {json.dumps(bad)}\n")  # quoted: YAML refuses raw control chars
    with pytest.raises(ConfigError) as info:
        load_config(yaml_path)
    assert info.value.field == "auth_2.api_key"
    _assert_names_position_not_key(info.value, bad, position, char)


@pytest.mark.parametrize(
    ("bad", "position", "char"),
    [case[1:] for case in UNSENDABLE_KEYS],
    ids=[case[0] for case in UNSENDABLE_KEYS],
)
def test_unsendable_key_added_programmatically(bad: str, position: int, char: str) -> None:
    with pytest.raises(ConfigError) as info:
        APIKeyManager([K1, bad], make_default=False)
    assert info.value.field == "api_keys[1]"
    _assert_names_position_not_key(info.value, bad, position, char)
    with pytest.raises(ConfigError) as info:
        APIKeyManager([{"api_key": bad}], make_default=False)
    assert info.value.field == "api_keys[0].api_key"
    with APIKeyManager([K1], make_default=False) as pool:
        with pytest.raises(ConfigError) as info:
            pool.add_keys(config_from_keys([K2, bad]))
        _assert_names_position_not_key(info.value, bad, position, char)
        with pytest.raises(ConfigError):
            pool.add_keys(ToolkitConfig(keys=(KeyConfig(api_key=bad),), source="mine"))
        assert pool.key_count == 1
    with pytest.raises(ConfigError) as info:
        config_from_env({"OPENAI_API_KEY_2": bad})
    assert (info.value.source, info.value.field) == ("environment", "OPENAI_API_KEY_2")
    _assert_names_position_not_key(info.value, bad, position, char)


def test_unsendable_organization_or_project() -> None:
    with pytest.raises(ConfigError, match=r"character 5 of 8 is U\+00E9") as info:
        config_from_keys([{"api_key": K1, "organization": "org-écho"}])
    assert info.value.field == "api_keys[0].organization"
    with pytest.raises(ConfigError, match="cannot be sent in an HTTP header"):
        config_from_env({"OPENAI_API_KEY": K1, "OPENAI_PROJECT_ID": "proj_\u200b1"})
    # Printable ASCII, spaces included, is fine in a header value.
    assert KeyConfig(api_key=K1, project="proj 1").project == "proj 1"


def test_keys_check_refuses_an_unsendable_key_in_one_line(
    run_cli: InProcessCli, tmp_path: Path
) -> None:
    bad = UNSENDABLE_KEYS[0][1]
    path = _write(tmp_path, "keys.json", {"api_keys": [K1, bad]})
    result = run_cli("keys", "check", "--config", str(path))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert f"{path}, field 'api_keys[1]'" in result.stderr
    assert "character 13 of 49 is U+200B (ZERO WIDTH SPACE)" in result.stderr
    assert bad not in result.stderr and K1 not in result.stdout + result.stderr


def test_typed_options_match_the_optional_key_fields() -> None:
    """The loaders' TypedDict names every optional KeyConfig field, with the field's type."""
    from typing import get_type_hints

    from openai_parallel_toolkit import config

    optional = {
        f.name: f.type for f in dataclasses.fields(KeyConfig) if f.name not in ("api_key", "source")
    }
    assert set(config._KeyOptions.__annotations__) == set(optional) == set(config._OPTIONAL_CHECKS)
    hints = get_type_hints(config._KeyOptions)
    for name, declared in optional.items():
        assert f"{hints[name].__name__} | None" == declared, name


def test_manager_takes_api_base_and_proxy_for_the_whole_list(tmp_path: Path) -> None:
    """APIKeyManager(api_keys=[...], api_base=...) raised TypeError (issue 13)."""
    from openai_parallel_toolkit import ChatModel, request_openai_api
    from openai_parallel_toolkit.testing import FakeOpenAIServer

    with FakeOpenAIServer(keys=["sk-test-1", "sk-test-2"]) as server:
        pool = APIKeyManager(
            api_keys=[
                "sk-test-1",
                {"api_key": "sk-test-2", "proxy": "http://own-proxy.test:3128"},
            ],
            api_base=server.base_url,
            proxy="http://shared-proxy.test:8080",
            make_default=False,
        )
        try:
            first, second = pool.config.keys
            assert first.api_base == second.api_base == server.base_url
            assert first.proxy == "http://shared-proxy.test:8080"
            assert second.proxy == "http://own-proxy.test:3128"  # the key's own entry wins
        finally:
            pool.close()
        # Without a proxy the requests reach the fake server at api_base.
        pool = APIKeyManager(api_keys=["sk-test-1"], api_base=server.base_url, make_default=False)
        try:
            assert request_openai_api(ChatModel(content="hi"), manager=pool) == "echo: hi"
        finally:
            pool.close()
    with pytest.raises(ConfigError, match="api_base"):
        APIKeyManager(api_keys=[K1], api_base="not a url", make_default=False)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"api_keys": [K1]}), encoding="utf-8")
    with pytest.raises(TypeError, match="api_keys"):
        APIKeyManager(config_path=config, api_base="http://127.0.0.1:1/v1", make_default=False)
