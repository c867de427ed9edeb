"""Tests of tokens.py and tiktoken_cache.py, with the real encodings and no network."""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
import tiktoken.registry

from openai_parallel_toolkit import tiktoken_cache, tokens
from openai_parallel_toolkit.errors import TokenizerUnavailableError, ToolkitError
from openai_parallel_toolkit.tiktoken_cache import (
    ENCODING_SHA256,
    TiktokenSeedError,
    cache_file_name,
    default_cache_dir,
    main,
    packaged_encoding,
    packaged_encoding_names,
    seed_cache,
    seed_cache_report,
)
from openai_parallel_toolkit.tokens import (
    encoding_for,
    encoding_name_for,
    estimate_chat_tokens,
    estimate_tokens,
    num_tokens_from_string,
    split_string_by_tokens,
)

# sha1 of https://openaipublic.blob.core.windows.net/encodings/<name>.tiktoken, as tiktoken names
# its cache files.
CACHE_NAMES = {
    "cl100k_base": "9b5ad71b2ce5302211f9c61530b329a4922fc6a4",
    "o200k_base": "fb374d419588a4632f3f557e76b4b70aebbca790",
}

LOGGER = "openai_parallel_toolkit.tokens"


def _seeded_bytes(name: str) -> bytes:
    """The verified encoding file the session setup (conftest) put in the cache."""
    return (Path(os.environ["TIKTOKEN_CACHE_DIR"]) / CACHE_NAMES[name]).read_bytes()


class _NetworkBlocked(OSError):
    pass


@pytest.fixture
def network_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Block tiktoken's downloads; the list records each attempted URL."""
    calls: list[str] = []

    def blocked(blobpath: str) -> bytes:
        calls.append(blobpath)
        raise _NetworkBlocked(f"network blocked in tests: {blobpath}")

    monkeypatch.setattr(tiktoken.load, "read_file", blocked)
    # tiktoken keeps loaded encodings in this dict; an empty one forces a real load.
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    return calls


@pytest.fixture
def no_encodings(
    network_calls: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[list[str]]:
    """No encoding can be loaded: empty cache folder, no network, no bpe-openai package."""
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(empty))
    monkeypatch.setitem(sys.modules, "bpe_openai", None)  # as if it were not installed
    tokens.clear_caches()
    yield network_calls
    tokens.clear_caches()


# --- encodings and counts ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-3.5-turbo-16k", "cl100k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("text-embedding-3-small", "cl100k_base"),
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-4.1-nano-2025-04-14", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o1", "o200k_base"),
        ("o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base"),
        # tiktoken's own prefix table maps this one to cl100k_base (it matches "ft:gpt-4").
        ("ft:gpt-4.1-2025-04-14:acme:tag:xyz", "o200k_base"),
        ("ft:gpt-3.5-turbo-0125:acme::xyz", "cl100k_base"),
        ("openai/gpt-4o", "o200k_base"),
        ("o3-hypothetical-2099", "o200k_base"),
        ("GPT-4O-FUTURE", "o200k_base"),
        ("my-local-llama", "cl100k_base"),
        ("cl100k_base", "cl100k_base"),
        ("o200k_base", "o200k_base"),
        ("p50k_base", "p50k_base"),
        ("r50k_base", "r50k_base"),
    ],
)
def test_encoding_name_for(name: str, expected: str) -> None:
    assert encoding_name_for(name) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-3.5-turbo", "cl100k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4o", "o200k_base"),
        ("gpt-4.1", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("o200k_base", "o200k_base"),
    ],
)
def test_encoding_for_loads_the_right_encoding(model: str, expected: str) -> None:
    assert encoding_for(model).name == expected


def test_known_token_ids_and_counts() -> None:
    # Values published with tiktoken's examples / OpenAI's cookbook and checked by hand.
    assert encoding_for("cl100k_base").encode("hello world") == [15339, 1917]
    assert encoding_for("o200k_base").encode("hello world") == [24912, 2375]
    assert encoding_for("gpt-4").encode("tiktoken is great!") == [83, 1609, 5963, 374, 2294, 0]
    assert encoding_for("gpt-4o").encode("tiktoken is great!") == [83, 8251, 2488, 382, 2212, 0]
    assert num_tokens_from_string("hello world") == 2
    assert num_tokens_from_string("hello world", "cl100k_base") == 2
    assert num_tokens_from_string("hello world", "gpt-4o") == 2
    assert num_tokens_from_string("Hello, world!", "gpt-4") == 4
    assert num_tokens_from_string("你好，世界。", "gpt-3.5-turbo") == 7
    assert num_tokens_from_string("你好，世界。", "gpt-4o-mini") == 4
    assert num_tokens_from_string("", "gpt-4o") == 0


def test_special_token_text_is_counted_as_text() -> None:
    assert num_tokens_from_string("<|endoftext|>", "cl100k_base") == 7
    assert num_tokens_from_string("<|endoftext|>", "o200k_base") == 7


def test_encoding_for_is_cached() -> None:
    tokens.clear_caches()
    first = encoding_for("gpt-4o-mini")
    assert encoding_for("gpt-4o-mini") is first
    assert encoding_for.cache_info().hits >= 1


def test_encodings_load_from_the_seeded_cache_with_network_blocked(
    network_calls: list[str],
) -> None:
    o200k = tiktoken.get_encoding("o200k_base")
    cl100k = tiktoken.get_encoding("cl100k_base")
    assert o200k.encode("hello world") == [24912, 2375]
    assert cl100k.encode("hello world") == [15339, 1917]
    assert network_calls == []


def test_import_does_not_load_encodings() -> None:
    code = (
        "import tiktoken.registry as r, openai_parallel_toolkit.tokens;"
        "assert not r.ENCODINGS, r.ENCODINGS"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- the offline extra's encodings, found without any variable (issue 13) -------------------


def _offline_env(tmp_path: Path) -> dict[str, str]:
    """An environment with no tiktoken variable, an empty temp folder and no way out."""
    env = {
        k: v for k, v in os.environ.items() if k not in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR")
    }
    empty_tmp = tmp_path / "tmp"
    empty_tmp.mkdir()
    dead_proxy = "http://127.0.0.1:9"  # nothing listens: a download fails at once
    env |= {"TMPDIR": str(empty_tmp), "HTTPS_PROXY": dead_proxy, "HTTP_PROXY": dead_proxy}
    return env


def test_offline_extra_encodings_are_found_without_any_variable(tmp_path: Path) -> None:
    code = (
        "from openai_parallel_toolkit import num_tokens_from_string, split_string_by_tokens\n"
        "print(num_tokens_from_string('hello world'), num_tokens_from_string('hello world', "
        "'gpt-4o'), len(split_string_by_tokens('a. b. c.', 2, '. ')))\n"
    )
    env = _offline_env(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "2 2 3\n", "")
    # The package's files went where tiktoken keeps its downloads, and nothing else.
    (cache,) = (tmp_path / "tmp").iterdir()
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        tiktoken_cache.cache_file_name(name) for name in ("cl100k_base", "o200k_base")
    )


def test_an_unavailable_encoding_is_one_short_line(tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "sys.modules['bpe_openai'] = None  # as if the offline extra were not installed\n"
        "from openai_parallel_toolkit import estimate_tokens\n"
        "print(estimate_tokens('abcdefgh'))\n"
    )
    env = _offline_env(tmp_path)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout) == (0, "2\n")
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and len(lines[0]) < 300, result.stderr
    assert "characters/4" in lines[0] and "pip install -e '.[offline]'" in lines[0]
    for noise in ("urllib3", "HTTPSConnectionPool", "Traceback", "Max retries"):
        assert noise not in result.stderr


@pytest.mark.parametrize("name", ["cl100k_base", "o200k_base"])
def test_packaged_encodings_equal_tiktokens_own(name: str) -> None:
    assert name in packaged_encoding_names()
    built = packaged_encoding(name)
    reference = tiktoken.get_encoding(name)  # from the seeded cache
    assert built is not None
    assert built.n_vocab == reference.n_vocab
    text = "Hello, world! 你好，世界。 It's 2024: 12345 tokens\n\n  indented <|endoftext|>"
    assert built.encode_ordinary(text) == reference.encode_ordinary(text)
    assert packaged_encoding("p50k_base") is None  # not shipped by bpe-openai


def test_encoding_for_uses_the_package_when_the_cache_is_empty(
    network_calls: list[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    tokens.clear_caches()
    try:
        assert encoding_for("gpt-4o").encode("hello world") == [24912, 2375]
    finally:
        tokens.clear_caches()
    assert network_calls == []
    assert [p.name for p in tmp_path.iterdir()] == [tiktoken_cache.cache_file_name("o200k_base")]


# --- failure when no encoding can be loaded ---------------------------------------------------


def test_num_tokens_raises_when_encoding_unavailable(no_encodings: list[str]) -> None:
    with pytest.raises(TokenizerUnavailableError) as info:
        num_tokens_from_string("hello world", "gpt-4o")
    message = str(info.value)
    assert "'o200k_base'" in message
    assert "python -m openai_parallel_toolkit.tiktoken_cache" in message
    assert "TIKTOKEN_CACHE_DIR" in message
    assert isinstance(info.value.__cause__, _NetworkBlocked)
    assert isinstance(info.value, ToolkitError)
    with pytest.raises(TokenizerUnavailableError, match="cl100k_base"):
        num_tokens_from_string("hello world")
    with pytest.raises(TokenizerUnavailableError):
        split_string_by_tokens("a. b.", 5, ".")
    assert no_encodings  # the download was attempted, and refused


def test_encoding_load_is_retried_after_a_failure(
    no_encodings: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(TokenizerUnavailableError):
        encoding_for("cl100k_base")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(Path(os.environ["TIKTOKEN_CACHE_DIR"]).parent))
    # The session's seeded cache (conftest) is the source: the package is hidden here.
    session_cache = Path(__file__).resolve().parent.parent / ".tiktoken-cache"
    seed_cache(os.environ["TIKTOKEN_CACHE_DIR"], encodings=["cl100k_base"], source=session_cache)
    assert encoding_for("cl100k_base").encode("hello world") == [15339, 1917]


def test_estimate_tokens_falls_back_with_one_warning(
    no_encodings: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert estimate_tokens("") == 0
    assert estimate_tokens("a") == 1
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde", "gpt-4") == 2
    assert estimate_tokens("x" * 400, "gpt-4o") == 100
    for i in range(2000):
        estimate_tokens("some text " * (i % 7), model=("gpt-4o", "gpt-4", None)[i % 3])
    messages = [{"role": "user", "content": "abcdefgh"}]
    assert estimate_chat_tokens(messages, "gpt-4o") == 3 + 1 + 2 + 3
    warnings = [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert "characters/4" in warnings[0].getMessage()
    # One failed load per distinct model name, not one per call.
    assert len(no_encodings) <= 3


def test_estimate_tokens_is_exact_when_the_encoding_loads() -> None:
    text = "The quick brown fox jumps over the lazy dog. 你好，世界。" * 3
    for model in ("gpt-4", "gpt-4o", None):
        assert estimate_tokens(text, model) == num_tokens_from_string(text, model or "o200k_base")
    assert estimate_tokens("hello world") == 2


def test_estimate_chat_tokens() -> None:
    # "user" and "hello world" are 1 and 2 tokens in both encodings.
    one = [{"role": "user", "content": "hello world"}]
    assert estimate_chat_tokens(one, "gpt-4o") == 3 + 1 + 2 + 3
    assert estimate_chat_tokens(one, "gpt-3.5-turbo") == 3 + 1 + 2 + 3
    assert estimate_chat_tokens([], "gpt-4o") == 3
    named = [{"role": "user", "name": "Alice", "content": "hello world"}]
    assert estimate_chat_tokens(named, "gpt-4") == 3 + 1 + 1 + 1 + 2 + 3
    parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "hello world"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
            ],
        }
    ]
    assert estimate_chat_tokens(parts, "gpt-4o") == 3 + 1 + 2 + tokens.IMAGE_PART_TOKENS + 3
    empty_content = [{"role": "assistant", "content": None}]
    assert estimate_chat_tokens(empty_content, "gpt-4o") == 3 + 1 + 3
    tool_call = [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"function": {"name": "hello world", "arguments": "hello world"}}],
        }
    ]
    assert estimate_chat_tokens(tool_call, "gpt-4o") == 3 + 1 + 2 + 2 + 3


# --- splitting --------------------------------------------------------------------------------


def _is_single_sentence(piece: str, signal: str) -> bool:
    first = piece.find(signal)
    return first == -1 or first == len(piece) - len(signal)


def _check_split(text: str, limit: int, signal: str, model: str) -> list[str]:
    pieces = split_string_by_tokens(text, limit, signal, model)
    assert "".join(pieces) == text
    assert all(pieces), "no empty pieces"
    for piece in pieces[:-1]:
        assert piece.endswith(signal)
    for piece in pieces:
        if not _is_single_sentence(piece, signal):
            assert num_tokens_from_string(piece, model) <= limit, (piece, limit)
    return pieces


ALPHABET = [
    *"abcdefXYZ  ,;:!?'-0123",
    *"数据模型中文测试句子",
    "😀",
    "é",
    " the",
    " token",
    "...",
    "\n",
    "\n\n",
    "\t",
    "'s",
]


def test_split_joins_back_exactly_for_random_inputs() -> None:
    rng = random.Random(20240611)
    signals = ["。", ".", "\n", ". ", "!!", "。\n"]
    for model in ("gpt-3.5-turbo", "gpt-4o"):
        for _ in range(250):
            signal = rng.choice(signals)
            chunks = [rng.choice([*ALPHABET, signal, signal]) for _ in range(rng.randint(1, 120))]
            _check_split("".join(chunks), rng.randint(1, 40), signal, model)


def test_split_chinese_text() -> None:
    sentence = "今天天气很好，我们去公园散步。"
    text = sentence * 40 + "最后一句没有句号"
    per_sentence = num_tokens_from_string(sentence, "gpt-4o")
    pieces = _check_split(text, per_sentence * 5, "。", "gpt-4o")
    assert pieces[0] == sentence * 5
    assert pieces[-1].endswith("最后一句没有句号")
    assert len(pieces) == 9


def test_split_fills_pieces_greedily() -> None:
    text = "One. Two. Three. Four. Five."
    assert split_string_by_tokens(text, 1000, ".") == [text]
    # Every sentence is 2 tokens ("One" + "." / " Two" + "."), so 4 tokens hold two sentences.
    assert split_string_by_tokens(text, 4, ".") == ["One. Two.", " Three. Four.", " Five."]
    assert split_string_by_tokens(text, 1, ".") == ["One.", " Two.", " Three.", " Four.", " Five."]


def test_split_keeps_an_oversized_sentence_whole() -> None:
    long = " ".join(["word"] * 200) + "."
    text = "Short one." + long + " Tail."
    pieces = split_string_by_tokens(text, 10, ".")
    assert pieces == ["Short one.", long, " Tail."]
    assert num_tokens_from_string(long) > 10


def test_split_edge_cases() -> None:
    assert split_string_by_tokens("", 10, ".") == []
    assert split_string_by_tokens("no signal here", 1, ".") == ["no signal here"]
    assert split_string_by_tokens("a。b。", 100, "。") == ["a。b。"]  # no separator appended
    assert split_string_by_tokens("a。b", 100, "。") == ["a。b"]
    assert split_string_by_tokens("。。。", 1, "。") == ["。", "。", "。"]
    assert split_string_by_tokens(".", 5, ".") == ["."]
    with pytest.raises(ValueError, match="thunk_len"):
        split_string_by_tokens("a. b.", 0, ".")
    with pytest.raises(ValueError, match="thunk_len"):
        split_string_by_tokens("a. b.", -3, ".")
    with pytest.raises(ValueError, match="split_signal"):
        split_string_by_tokens("a. b.", 5, "")
    assert split_string_by_tokens(string="x. y.", thunk_len=1, split_signal=".") == ["x.", " y."]


def test_split_limit_holds_where_tokens_merge_across_sentences() -> None:
    # "!." and ",." are one token each, but "!.,." is three: the sum of per-sentence counts
    # under-counts the joined piece, which must therefore be re-checked as a whole.
    for model in ("gpt-3.5-turbo", "gpt-4o"):
        assert num_tokens_from_string("!.", model) == 1
        assert num_tokens_from_string(",.", model) == 1
        assert num_tokens_from_string("!.,.", model) == 3
        text = "!.,." * 30
        # By the sum, "!.,." would fit in 2 tokens.
        assert split_string_by_tokens(text, 2, ".", model)[0] == "!."
        for limit in range(1, 12):
            _check_split(text, limit, ".", model)


def test_split_tokenises_in_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    encoding = encoding_for("gpt-4o")
    seen: list[int] = []
    original = encoding.encode_ordinary

    def counting(text: str) -> list[int]:
        seen.append(len(text))
        return original(text)

    monkeypatch.setattr(encoding, "encode_ordinary", counting)
    rng = random.Random(7)
    text = "".join(rng.choice([*ALPHABET, "。"]) for _ in range(20_000))
    pieces = split_string_by_tokens(text, 50, "。", "gpt-4o")
    assert "".join(pieces) == text
    # Each sentence once, each multi-sentence piece about once more.
    assert sum(seen) <= 2.2 * len(text)


# --- seeding the cache ------------------------------------------------------------------------


def test_cache_file_names_match_tiktoken() -> None:
    for name, digest in CACHE_NAMES.items():
        assert cache_file_name(name) == digest
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        assert hashlib.sha1(url.encode()).hexdigest() == digest


def test_seed_cache_is_idempotent(tmp_path: Path) -> None:
    target = tmp_path / "cache"
    assert seed_cache(target) == target
    stats = {}
    for name, digest in CACHE_NAMES.items():
        path = target / digest
        assert hashlib.sha256(path.read_bytes()).hexdigest() == ENCODING_SHA256[name]
        stats[name] = path.stat().st_mtime_ns
    directory, results = seed_cache_report(target)
    assert directory == target
    assert [(r.encoding, r.action) for r in results] == [
        ("cl100k_base", "present"),
        ("o200k_base", "present"),
    ]
    for name, digest in CACHE_NAMES.items():
        assert (target / digest).stat().st_mtime_ns == stats[name]
    assert sorted(p.name for p in target.iterdir()) == sorted(CACHE_NAMES.values())


def test_seed_cache_replaces_a_corrupt_cache_file(tmp_path: Path) -> None:
    (tmp_path / CACHE_NAMES["cl100k_base"]).write_bytes(b"truncated")
    _, results = seed_cache_report(tmp_path, encodings=["cl100k_base"])
    assert results[0].action == "replaced"
    data = (tmp_path / CACHE_NAMES["cl100k_base"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == ENCODING_SHA256["cl100k_base"]


def test_seed_cache_from_a_folder_source(tmp_path: Path, network_calls: list[str]) -> None:
    source = tmp_path / "source"
    source.mkdir()
    (source / "o200k_base.tiktoken").write_bytes(_seeded_bytes("o200k_base"))
    (source / "cl100k_base.tiktoken.gz").write_bytes(gzip.compress(_seeded_bytes("cl100k_base")))
    target = tmp_path / "cache"
    _, results = seed_cache_report(target, source=source)
    assert {r.encoding: Path(r.source or "").name for r in results} == {
        "cl100k_base": "cl100k_base.tiktoken.gz",
        "o200k_base": "o200k_base.tiktoken",
    }
    for name, digest in CACHE_NAMES.items():
        assert hashlib.sha256((target / digest).read_bytes()).hexdigest() == ENCODING_SHA256[name]


def test_seed_cache_rejects_a_tampered_source(tmp_path: Path) -> None:
    data = bytearray(_seeded_bytes("cl100k_base"))
    data[100] ^= 1
    source = tmp_path / "source"
    source.mkdir()
    tampered = source / "cl100k_base.tiktoken"
    tampered.write_bytes(bytes(data))
    target = tmp_path / "cache"
    with pytest.raises(TiktokenSeedError) as info:
        seed_cache(target, source=source, encodings=["cl100k_base"])
    message = str(info.value)
    assert str(tampered) in message
    assert ENCODING_SHA256["cl100k_base"] in message
    assert hashlib.sha256(bytes(data)).hexdigest() in message
    assert isinstance(info.value, TokenizerUnavailableError)
    assert list(target.iterdir()) == []  # nothing written, no temporary file left


def test_seed_cache_reports_a_missing_source(tmp_path: Path) -> None:
    with pytest.raises(TiktokenSeedError, match=r"'o200k_base' not found.*o200k_base\.tiktoken"):
        seed_cache(tmp_path / "cache", source=tmp_path, encodings=["o200k_base"])
    with pytest.raises(TiktokenSeedError, match="does not exist"):
        seed_cache(tmp_path / "cache", source=tmp_path / "nope")
    with pytest.raises(TiktokenSeedError, match="unknown tiktoken encoding"):
        seed_cache(tmp_path / "cache", encodings=["nope_base"])


def test_default_cache_dir_follows_tiktoken(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert default_cache_dir() == tmp_path
    assert seed_cache() == tmp_path
    monkeypatch.delenv("TIKTOKEN_CACHE_DIR")
    monkeypatch.setenv("DATA_GYM_CACHE_DIR", str(tmp_path / "gym"))
    assert default_cache_dir() == tmp_path / "gym"
    monkeypatch.delenv("DATA_GYM_CACHE_DIR")
    assert default_cache_dir().name == "data-gym-cache"
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")
    with pytest.raises(TiktokenSeedError, match="disables"):
        default_cache_dir()


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--cache-dir", str(tmp_path), "--encoding", "cl100k_base"]) == 0
    out = capsys.readouterr().out
    assert "cl100k_base: written" in out
    assert f"export TIKTOKEN_CACHE_DIR={tmp_path.resolve()}" in out
    assert main(["--cache-dir", str(tmp_path), "--encoding", "cl100k_base"]) == 0
    assert "already present" in capsys.readouterr().out
    assert main(["--cache-dir", str(tmp_path / "other"), "--source", str(tmp_path / "nope")]) == 1
    assert "does not exist" in capsys.readouterr().err
