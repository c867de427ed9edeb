"""One configuration model for API keys, loaded from JSON, YAML, environment variables or `.env`.

Accepted file forms (JSON and YAML alike)::

    {"api_keys": ["sk-...", "sk-..."], "api_base": "https://api.openai.com/v1"}

    {"api_keys": ["sk-...", {"api_key": "sk-...", "proxy": "http://127.0.0.1:7890",
                             "requests_per_min": 500, "tokens_per_min": 200000}],
     "requests_per_min": 60}

    auth_1:                       # openai-manager's form: one block per key, any block names
      api_key: sk-...
      proxy: http://127.0.0.1:7890
      requests_per_min: 60
      tokens_per_min: 150000

Top-level ``api_base``, ``proxy``, ``organization``, ``project``, ``requests_per_min``,
``tokens_per_min`` and ``timeout`` (seconds per request) are defaults for every key; a key's own
value wins. ``null`` means "not given". A top-level ``prices:`` mapping (model -> ``{input,
output, cached_input}`` in USD per million tokens) prices models the price library does not know
(private deployments, fine-tunes) or prices differently.

Every problem raises `ConfigError` naming the file (or "environment", "arguments") and the field,
e.g. ``api_keys[2].requests_per_min``; keys are masked in every message and repr.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib.util
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TypedDict, TypeVar, cast
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError, describe_char, mask_key
from .prices import Price, prices_from_mapping

__all__ = [
    "KeyConfig",
    "ToolkitConfig",
    "config_from_env",
    "config_from_keys",
    "config_from_mapping",
    "load_config",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_API_BASE_SCHEMES = ("http", "https")
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")
_SCHEME_PATTERN = re.compile(r"[a-z][a-z0-9+.\-]{0,15}")
_NUMERIC_TEXT = re.compile(r"\s*[-+]?(\d[\d_]*\.?\d*|\.\d+)([eE][-+]?\d+)?\s*")
# What httpx can send in a header value: ASCII, without control characters. Keys also have no
# spaces; organization and project IDs are sent as headers too.
_KEY_CHARS = re.compile(r"[\x21-\x7e]")
_HEADER_CHARS = re.compile(r"[\x20-\x7e]")
# Packages a proxy scheme needs beyond httpx itself, and the extra of ours that installs them.
_PROXY_PACKAGES = {"socks5": ("socksio", "socks"), "socks5h": ("socksio", "socks")}


# --- checks of single values ------------------------------------------------------------------


def _fail(message: str, source: str, name: str | None) -> NoReturn:
    raise ConfigError(message, source=source, field=name)


def _kind(value: object) -> str:
    """A user-facing name for the type of a parsed value (never the value: it may be a secret)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def _check_api_key(value: object, source: str, name: str) -> str:
    if not isinstance(value, str):
        _fail(f"the API key must be a string, got {_kind(value)}", source, name)
    if not value:
        _fail("the API key is empty", source, name)
    if any(char.isspace() for char in value):
        # The key itself is not shown: with whitespace inside, redact() would only mask part of it.
        _fail("the API key contains whitespace (a stray space or line break?)", source, name)
    bad = _first_unsendable(value, _KEY_CHARS)
    if bad is not None:
        # It would fail every request in the HTTP stack, before anything is sent.
        _fail(
            f"the API key cannot be sent in an HTTP header: {describe_char(value, bad)}; "
            "copy the key again (a zero-width space or a look-alike letter?)",
            source,
            name,
        )
    return value


def _first_unsendable(value: str, allowed: re.Pattern[str]) -> int | None:
    """The index of the first character of `value` that `allowed` rejects, or None."""
    for index, char in enumerate(value):
        if not allowed.fullmatch(char):
            return index
    return None


def _check_limit(value: object, source: str, name: str) -> float:
    return _check_positive(
        value, source, name, "; leave it out to learn limits from response headers"
    )


def _check_timeout(value: object, source: str, name: str) -> float:
    return _check_positive(value, source, name, " (seconds per request)")


def _check_positive(value: object, source: str, name: str, hint_if_not_positive: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        hint = ""
        if isinstance(value, str) and _NUMERIC_TEXT.fullmatch(value):
            hint = f"; write {value.strip()} without quotes"
        _fail(f"must be a number, got {_kind(value)}{hint}", source, name)
    try:
        number = float(value)
    except OverflowError:
        _fail("is too large", source, name)
    if not math.isfinite(number):
        _fail(f"must be a finite number, got {value}", source, name)
    if number <= 0:
        _fail(f"must be > 0, got {value}{hint_if_not_positive}", source, name)
    return number


def _check_url(value: object, source: str, name: str, schemes: tuple[str, ...]) -> str:
    allowed = ", ".join(f"{scheme}://" for scheme in schemes)
    if not isinstance(value, str):
        _fail(f"must be a URL string, got {_kind(value)}", source, name)
    if any(char.isspace() for char in value):
        _fail("must not contain whitespace", source, name)
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if not _SCHEME_PATTERN.fullmatch(scheme):
        # Only the scheme is ever echoed: the rest of a URL may hold a proxy password.
        _fail(f"must start with one of {allowed} (no scheme found)", source, name)
    if scheme not in schemes:
        _fail(f"must start with one of {allowed}, got {scheme}://", source, name)
    try:
        host = urlsplit(value).hostname
    except ValueError:
        host = None
    if not host:
        _fail("is not a valid URL: it has no host", source, name)
    return value


def _check_api_base(value: object, source: str, name: str) -> str:
    return _check_url(value, source, name, _API_BASE_SCHEMES).rstrip("/")


def _check_proxy(value: object, source: str, name: str) -> str:
    url = _check_url(value, source, name, _PROXY_SCHEMES)
    scheme = url.split("://", 1)[0].lower()
    if scheme in _PROXY_PACKAGES:
        package, extra = _PROXY_PACKAGES[scheme]
        # Checked now: httpx only finds out when the first client is built, with a traceback.
        if importlib.util.find_spec(package) is None:
            _fail(
                f"a {scheme}:// proxy needs the {package!r} package: install the {extra} "
                f'extra (pip install ".[{extra}]" in the project folder)',
                source,
                name,
            )
    return url


def _check_text(value: object, source: str, name: str) -> str:
    if not isinstance(value, str):
        _fail(f"must be a string, got {_kind(value)}", source, name)
    if not value.strip():
        _fail("must not be empty", source, name)
    return value


def _check_header_text(value: object, source: str, name: str) -> str:
    text = _check_text(value, source, name)
    bad = _first_unsendable(text, _HEADER_CHARS)
    if bad is not None:
        _fail(f"cannot be sent in an HTTP header: {describe_char(text, bad)}", source, name)
    return text


# The optional per-key fields, in KeyConfig's order, with the check that validates each one.
_OPTIONAL_CHECKS: dict[str, Callable[[object, str, str], object]] = {
    "api_base": _check_api_base,
    "proxy": _check_proxy,
    "organization": _check_header_text,
    "project": _check_header_text,
    "requests_per_min": _check_limit,
    "tokens_per_min": _check_limit,
    "limit_group": _check_text,
    "timeout": _check_timeout,
}
_ENTRY_FIELDS = ("api_key", *_OPTIONAL_CHECKS)
_DEFAULT_FIELDS = (
    "api_base",
    "proxy",
    "organization",
    "project",
    "requests_per_min",
    "tokens_per_min",
    "limit_group",  # all keys of one project: one shared limit
    "timeout",
)
_TOP_FIELDS = ("api_keys", "shared_state", "prices", *_DEFAULT_FIELDS)
# Where limiter state is shared between processes, when the config file does not say.
SHARED_STATE_VARIABLE = "OPENAI_PARALLEL_TOOLKIT_REDIS_URL"
_SHARED_STATE_SCHEMES = ("redis://", "rediss://", "unix://")


class _KeyOptions(TypedDict, total=False):
    """Checked optional KeyConfig fields, for one key or as defaults (the `_OPTIONAL_CHECKS`)."""

    api_base: str
    proxy: str
    organization: str
    project: str
    requests_per_min: float
    tokens_per_min: float
    limit_group: str
    timeout: float


def _options(checked: Iterable[tuple[str, object]]) -> _KeyOptions:
    """`_KeyOptions` of (field, value) pairs, each value as that field's check returned it.

    The one cast of the loaders: the checks in `_OPTIONAL_CHECKS` return each field's type, but
    the field names are chosen at run time, where a type checker cannot follow them.
    """
    return cast(_KeyOptions, dict(checked))


def masked_url(url: str | None) -> str | None:
    """`url` with any ``user:password@`` part replaced, for reprs."""
    if url is None or "@" not in url:
        return url
    scheme, _, rest = url.partition("://")
    authority, slash, path = rest.partition("/")
    host = authority.rpartition("@")[2]
    return f"{scheme}://***@{host}{slash}{path}"


# --- the model --------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True, slots=True)
class KeyConfig:
    """One API key and how to use it: base URL, proxy, organization/project and rate limits.

    Values are validated on construction (the loaders validate first, with file and field in the
    message). Limits are requests/tokens per minute; None means "learn them from the response
    headers". `timeout` is the seconds one request with this key may take (None: the pool's
    default). The repr and str show the key masked; the full key is only in `api_key`.
    """

    api_key: str = field(repr=False)
    api_base: str | None = None
    proxy: str | None = None
    organization: str | None = None
    project: str | None = None
    requests_per_min: float | None = None
    tokens_per_min: float | None = None
    limit_group: str | None = None
    timeout: float | None = None
    source: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.source, str):
            _fail(f"must be a string, got {_kind(self.source)}", "KeyConfig", "source")
        where = self.source or "KeyConfig"
        object.__setattr__(self, "api_key", _check_api_key(self.api_key, where, "api_key"))
        for name, check in _OPTIONAL_CHECKS.items():
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, check(value, where, name))

    @property
    def masked_key(self) -> str:
        """The key as shown in logs and messages, e.g. ``sk-...abcd#3f2a`` (see `mask_key`)."""
        return mask_key(self.api_key)

    @property
    def key_id(self) -> str:
        """16 hex digits of sha256(key): names the key in shared state without revealing it."""
        return hashlib.sha256(self.api_key.encode("utf-8")).hexdigest()[:16]

    @property
    def group(self) -> str:
        """The limit group this key counts against.

        `limit_group` when set; otherwise a name of its own, ``key:<masked key>#<12 hex digits of
        sha256(key)>``, stable across runs and processes and distinct for distinct keys.
        """
        if self.limit_group is not None:
            return self.limit_group
        # The mask's own label is the digest's first 4 digits: the longer digest replaces it.
        return f"key:{self.masked_key.rpartition('#')[0]}#{self.key_id[:12]}"

    def __repr__(self) -> str:
        parts = [f"api_key={self.masked_key!r}"]
        for name in _OPTIONAL_CHECKS:
            value = getattr(self, name)
            parts.append(f"{name}={masked_url(value) if name == 'proxy' else value!r}")
        parts.append(f"source={self.source!r}")
        return f"KeyConfig({', '.join(parts)})"

    __str__ = __repr__


@dataclass(frozen=True, kw_only=True, slots=True)
class ToolkitConfig:
    """The whole configuration: the keys (at least one, no duplicates) and where they came from.

    `source` is the file path as given, "environment" or "arguments"; `api_base` is the top-level
    default, already applied to the keys and kept for information. `shared_state` is the URL
    of the Redis server through which processes using these keys share their limits (None:
    each process on its own, unless ``OPENAI_PARALLEL_TOOLKIT_REDIS_URL`` is set). `prices`
    (the file's ``prices:``) overrides the price library for the models it names.
    """

    keys: tuple[KeyConfig, ...]
    source: str
    api_base: str | None = None
    shared_state: str | None = dataclasses.field(default=None, repr=False)  # may hold a password
    # model -> its price (USD per million tokens) for every tier, over the price library's.
    prices: Mapping[str, Price] = dataclasses.field(default_factory=dict, hash=False)

    def __post_init__(self) -> None:
        keys = tuple(self.keys)
        object.__setattr__(self, "keys", keys)
        for index, key in enumerate(keys):
            if not isinstance(key, KeyConfig):
                _fail(f"must be a KeyConfig, got {_kind(key)}", self.source, f"keys[{index}]")
        if not keys:
            _fail("no API keys", self.source, "keys")
        _reject_duplicates(
            [(key.source or f"keys[{index}]", key.api_key) for index, key in enumerate(keys)],
            self.source,
        )
        if self.api_base is not None:
            object.__setattr__(
                self, "api_base", _check_api_base(self.api_base, self.source, "api_base")
            )
        if self.shared_state is not None:
            check_shared_state(self.shared_state, self.source, "shared_state")
        # A copy of its own, so that the caller's mapping changing later cannot change it.
        object.__setattr__(self, "prices", dict(self.prices))


def _scheme_of(url: str) -> str:
    """What a URL starts with, for messages (the rest may hold a password)."""
    scheme, sep, _ = url.partition("://")
    return f"one starting with {scheme + sep!r}" if sep and len(scheme) < 16 else "no scheme"


def check_shared_state(value: object, source: str, field: str) -> str:
    """A shared-state URL (``redis://``, ``rediss://`` or ``unix://``), or a ConfigError."""
    if not isinstance(value, str):
        _fail(f"must be a Redis URL like redis://host:6379/0, got {_kind(value)}", source, field)
    if not value.startswith(_SHARED_STATE_SCHEMES):
        _fail(
            "must be a Redis URL starting with redis://, rediss:// or unix:// (like "
            f"redis://host:6379/0), got {_scheme_of(value)}",
            source,
            field,
        )
    return value


def _reject_duplicates(entries: Sequence[tuple[str, str]], source: str) -> None:
    """Raise if one key appears twice; `entries` are (position, key) pairs."""
    first_seen: dict[str, str] = {}
    for where, key in entries:
        if key in first_seen:
            _fail(
                f"the same API key {mask_key(key)} is listed twice: "
                f"at {first_seen[key]} and at {where}",
                source,
                where,
            )
        first_seen[key] = where


# --- building a config from parsed data -------------------------------------------------------


def _unknown_field(name: object, valid: Iterable[str], source: str, where: str) -> NoReturn:
    text = str(name)
    # The key fields first: "proxies" means proxy far more often than prices.
    names = list(valid)
    close = difflib.get_close_matches(text, [n for n in names if n != "prices"], n=1, cutoff=0.6)
    close = close or difflib.get_close_matches(text, names, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    if text == "shared_state" and where:
        hint = " (shared_state goes at the top level of the file, beside api_keys)"
    _fail(f"unknown field {text!r}{hint}", source, f"{where}.{text}" if where else text)


def _check_optional(
    values: Mapping[object, object],
    source: str,
    where: str,
    names: Iterable[str] = tuple(_OPTIONAL_CHECKS),
) -> _KeyOptions:
    """Validate those of the optional fields `names` present in `values`; null means not given."""
    checked: dict[str, object] = {}
    for name in names:
        value = values.get(name)
        if value is not None:
            check = _OPTIONAL_CHECKS[name]
            checked[name] = check(value, source, f"{where}.{name}" if where else name)
    return _options(checked.items())


def _build_key(raw: object, where: str, defaults: _KeyOptions, source: str) -> KeyConfig:
    """One `api_keys` entry (a key string, a mapping or a KeyConfig) -> KeyConfig at `where`."""
    if isinstance(raw, KeyConfig):
        filled = _options(
            (name, value) for name, value in defaults.items() if getattr(raw, name) is None
        )
        return dataclasses.replace(raw, source=raw.source or f"{source}: {where}", **filled)
    if isinstance(raw, str):
        api_key = _check_api_key(raw, source, where)
        own: _KeyOptions = {}
    elif isinstance(raw, Mapping):
        for name in raw:
            if name not in _ENTRY_FIELDS:
                _unknown_field(name, _ENTRY_FIELDS, source, where)
        if raw.get("api_key") is None:
            _fail("missing required field 'api_key'", source, f"{where}.api_key")
        api_key = _check_api_key(raw["api_key"], source, f"{where}.api_key")
        own = _check_optional(raw, source, where)
    else:
        _fail(
            f"each key must be a string or a mapping with 'api_key', got {_kind(raw)}",
            source,
            where,
        )
    options: _KeyOptions = {**defaults, **own}
    return KeyConfig(api_key=api_key, source=f"{source}: {where}", **options)


def _build_config(
    entries: Sequence[tuple[str, object]],
    defaults: _KeyOptions,
    source: str,
    missing_hint: str,
) -> ToolkitConfig:
    if not entries:
        _fail(f"no API keys: {missing_hint}", source, "api_keys")
    keys = [_build_key(raw, where, defaults, source) for where, raw in entries]
    _reject_duplicates(
        [(where, key.api_key) for (where, _), key in zip(entries, keys, strict=True)], source
    )
    return ToolkitConfig(keys=tuple(keys), source=source, api_base=defaults.get("api_base"))


def _as_list(value: object, source: str, name: str) -> list[object]:
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable):
        _fail(f"must be a list of API keys, got {_kind(value)}", source, name)
    return list(value)


def config_from_mapping(data: object, *, source: str = "arguments") -> ToolkitConfig:
    """Build a config from already parsed data in any accepted file form.

    `source` names the origin in messages (`load_config` passes the file path).
    """
    if not isinstance(data, Mapping):
        _fail(f"the top level must be a mapping with 'api_keys', got {_kind(data)}", source, None)
    if "api_keys" in data:
        for name in data:
            if name not in _TOP_FIELDS:
                _unknown_field(name, _TOP_FIELDS, source, "")
        defaults = _check_optional(data, source, "", _DEFAULT_FIELDS)
        raw_keys = _as_list(data["api_keys"], source, "api_keys")
        entries = [(f"api_keys[{index}]", raw) for index, raw in enumerate(raw_keys)]
        config = _build_config(entries, defaults, source, "the 'api_keys' list is empty")
        return _with_shared_state(config, data)
    # openai-manager's form: every top-level value that is not a default is a block of one key.
    blocks = {
        name: value
        for name, value in data.items()
        if name not in _DEFAULT_FIELDS and name not in ("shared_state", "prices")
    }
    for name, value in blocks.items():
        if not isinstance(value, Mapping):
            _not_a_block(name, value, source)
    defaults = _check_optional(data, source, "", _DEFAULT_FIELDS)
    entries = [(str(name), value) for name, value in blocks.items()]
    config = _build_config(
        entries,
        defaults,
        source,
        "expected an 'api_keys' list or blocks like 'auth_1: {api_key: ...}'",
    )
    return _with_shared_state(config, data)


def _with_shared_state(config: ToolkitConfig, data: Mapping[object, object]) -> ToolkitConfig:
    """`config` with the file's top-level ``shared_state`` and ``prices``, checked."""
    prices = data.get("prices")
    if prices is not None:
        config = dataclasses.replace(config, prices=prices_from_mapping(prices, config.source))
    value = data.get("shared_state")
    if value is None:
        return config
    url = check_shared_state(value, config.source, "shared_state")
    return dataclasses.replace(config, shared_state=url)


def _not_a_block(name: object, value: object, source: str) -> NoReturn:
    """Report a top-level value of openai-manager's form that is not a key block."""
    text = str(name)
    misspelt = difflib.get_close_matches(text, list(_TOP_FIELDS), n=1, cutoff=0.6)
    if not misspelt and (isinstance(value, str) or re.fullmatch(r"auth_?\w*", text)):
        _fail(
            f"a key block must be a mapping with 'api_key', like '{text}: {{api_key: sk-..., "
            f"proxy: ...}}' (in YAML: '{text}:' then '  api_key: sk-...' on the next line), "
            f"got {_kind(value)}",
            source,
            text,
        )
    _unknown_field(name, _TOP_FIELDS, source, "")


def config_from_keys(
    api_keys: Sequence[str | Mapping[str, object] | KeyConfig],
    *,
    api_base: str | None = None,
    proxy: str | None = None,
    source: str = "arguments",
) -> ToolkitConfig:
    """Build a config from a list of keys, as given to ``APIKeyManager(api_keys=[...])``.

    Entries are key strings, mappings like a file's `api_keys` entries, or `KeyConfig` objects;
    `api_base` and `proxy` apply to every entry that sets none itself, as a config file's
    top-level values do.
    """
    entries = [
        (f"api_keys[{index}]", raw)
        for index, raw in enumerate(_as_list(api_keys, source, "api_keys"))
    ]
    defaults = _check_optional({"api_base": api_base, "proxy": proxy}, source, "")
    return _build_config(entries, defaults, source, "the list of keys is empty")


# --- files ------------------------------------------------------------------------------------


class _DuplicateFieldError(Exception):
    """A JSON object or YAML mapping names one field twice (the parsers would keep the last)."""

    def __init__(self, name: object, line: int | None = None) -> None:
        super().__init__(name)
        self.name = str(name)
        self.line = line


def _json_object(pairs: list[tuple[str, object]]) -> dict[str, object]:
    result: dict[str, object] = {}
    for name, value in pairs:
        if name in result:
            raise _DuplicateFieldError(name)
        result[name] = value
    return result


class _ConfigYamlLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate fields and reads ``1e5`` as a number (YAML 1.2 style)."""


def _construct_mapping(loader: _ConfigYamlLoader, node: yaml.MappingNode) -> dict[object, object]:
    seen: set[object] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue  # `<<: *anchor` entries may legitimately be overridden
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:
            continue  # unhashable: construct_mapping reports it with its position
        if duplicate:
            raise _DuplicateFieldError(key, key_node.start_mark.line + 1)
        seen.add(key)
    return loader.construct_mapping(node)


_ConfigYamlLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)
_ConfigYamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _parse_json(text: str, source: str) -> object:
    try:
        return json.loads(text, object_pairs_hook=_json_object)
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}", source=source
        ) from exc
    except _DuplicateFieldError as exc:
        raise ConfigError(
            f"field {exc.name!r} appears twice in one object", source=source, field=exc.name
        ) from None


def _parse_yaml(text: str, source: str) -> object:
    try:
        return yaml.load(text, Loader=_ConfigYamlLoader)
    except _DuplicateFieldError as exc:
        raise ConfigError(
            f"field {exc.name!r} appears twice in one mapping (line {exc.line})",
            source=source,
            field=exc.name,
        ) from None
    except yaml.MarkedYAMLError as exc:
        # Built from the parts, not str(exc): that quotes the offending line, which may hold a key.
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        detail = "; ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError(f"invalid YAML{where}: {detail}", source=source) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}", source=source) from None


def load_config(path: str | os.PathLike[str]) -> ToolkitConfig:
    """Load a config file: JSON for ``.json``, YAML for ``.yaml``/``.yml``, else JSON then YAML.

    Raises `ConfigError` naming the file (as given) and the field for every problem.
    """
    source = os.fsdecode(path)
    file = Path(source)
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError("file not found", source=source) from None
    except IsADirectoryError:
        raise ConfigError("is a directory, not a config file", source=source) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"cannot read the file: not UTF-8 text (bad byte at offset {exc.start})", source=source
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", source=source) from exc
    if not text.strip():  # the same words for every format ("Expecting value" said nothing)
        _fail("the file is empty", source, None)
    suffix = file.suffix.lower()
    if suffix == ".json":
        data = _parse_json(text, source)
    elif suffix in (".yaml", ".yml"):
        data = _parse_yaml(text, source)
    else:
        try:
            data = _parse_json(text, source)
        except ConfigError as json_error:
            try:
                data = _parse_yaml(text, source)
            except ConfigError as yaml_error:
                # Report the error of the format the file was evidently meant to be in.
                raise (json_error if text.lstrip().startswith(("{", "[")) else yaml_error) from None
    if data is None:  # YAML of comments only, or a bare "null"
        _fail("the file is empty", source, None)
    return config_from_mapping(data, source=source)


# --- environment ------------------------------------------------------------------------------

_KEY_PREFIX = "OPENAI_API_KEY"
_PROXY_PREFIX = "OPENAI_API_PROXY"


def _natural_order(suffix: str) -> list[str | int]:
    """Sort key putting ``""`` first, then ``_1``, ``_2``, ..., ``_10`` in numeric order."""
    return [
        int(part) if index % 2 else part for index, part in enumerate(re.split(r"(\d+)", suffix))
    ]


def _read_dotenv(dotenv: str | os.PathLike[str] | bool | None) -> tuple[dict[str, str], str]:
    """The variables of the requested .env file (empty if none) and the file's name."""
    if dotenv is None or dotenv is False:
        return {}, ""
    if dotenv is True:
        file = Path(".env")
        if not file.is_file():
            return {}, ""
        source = ".env"
    else:
        source = os.fsdecode(dotenv)
        file = Path(source)
        if not file.exists():
            _fail("the .env file does not exist", source, None)
        if not file.is_file():
            _fail("the .env path is not a file", source, None)
    from dotenv import dotenv_values  # local: python-dotenv is only needed when a .env is read

    try:
        values = dotenv_values(file)
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"cannot read the file: not UTF-8 text (bad byte at offset {exc.start})", source=source
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", source=source) from exc
    return {name: value for name, value in values.items() if value is not None}, source


def config_from_env(
    environ: Mapping[str, str] | None = None,
    *,
    dotenv: str | os.PathLike[str] | bool | None = None,
) -> ToolkitConfig:
    """Build a config from environment variables (openai-manager's conventions).

    Every non-empty ``OPENAI_API_KEY*`` variable is a key, in natural suffix order;
    ``OPENAI_API_PROXY<suffix>`` is that key's proxy and plain ``OPENAI_API_PROXY`` the default;
    ``OPENAI_BASE_URL`` (or the older ``OPENAI_API_BASE``), ``OPENAI_ORG_ID`` and
    ``OPENAI_PROJECT_ID`` apply to every key. `environ` defaults to `os.environ`.

    `dotenv`: None/False reads no file, True reads ``./.env`` if it exists, a path reads that file
    (which must exist). Its values fill in what the environment leaves unset or empty; the process
    environment is never modified.
    """
    file_values, dotenv_source = _read_dotenv(dotenv)
    env = os.environ if environ is None else environ
    # name -> (value, where it came from); empty values count as unset
    found: dict[str, tuple[str, str]] = {
        name: (value, dotenv_source) for name, value in file_values.items() if value
    }
    for name, value in env.items():
        if name.startswith("OPENAI_") and value:
            found[name] = (value, "environment")

    def lookup(name: str, check: Callable[[object, str, str], _T]) -> _T | None:
        if name not in found:
            return None
        value, origin = found[name]
        return check(value, origin, name)

    checked: dict[str, object] = {}
    for name, field_name, check in (
        ("OPENAI_API_BASE", "api_base", _check_api_base),
        ("OPENAI_BASE_URL", "api_base", _check_api_base),  # after: the current name wins
        (_PROXY_PREFIX, "proxy", _check_proxy),
        ("OPENAI_ORG_ID", "organization", _check_header_text),
        ("OPENAI_PROJECT_ID", "project", _check_header_text),
    ):
        default = lookup(name, check)
        if default is not None:
            checked[field_name] = default
    defaults = _options(checked.items())

    suffixes = sorted(
        (name[len(_KEY_PREFIX) :] for name in found if name.startswith(_KEY_PREFIX)),
        key=_natural_order,
    )
    for name in found:
        suffix = name[len(_PROXY_PREFIX) :]
        if name.startswith(_PROXY_PREFIX) and suffix and suffix not in suffixes:
            logger.warning("%s is set but %s%s is not; ignoring it", name, _KEY_PREFIX, suffix)

    keys: list[KeyConfig] = []
    positions: list[tuple[str, str]] = []
    for suffix in suffixes:
        name = _KEY_PREFIX + suffix
        value, origin = found[name]
        api_key = _check_api_key(value, origin, name)
        own = defaults.copy()
        proxy = lookup(_PROXY_PREFIX + suffix, _check_proxy)
        if proxy is not None:
            own["proxy"] = proxy
        keys.append(KeyConfig(api_key=api_key, source=f"{origin}: {name}", **own))
        positions.append((name, api_key))
    if not keys:
        where = f" (nor in {dotenv_source})" if dotenv_source else ""
        _fail(
            f"no API key found: set {_KEY_PREFIX} or {_KEY_PREFIX}_1, {_KEY_PREFIX}_2, ...{where}",
            "environment",
            _KEY_PREFIX,
        )
    _reject_duplicates(positions, "environment")
    return ToolkitConfig(keys=tuple(keys), source="environment", api_base=defaults.get("api_base"))
