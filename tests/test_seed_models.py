"""Custom models written as the original toolkit's README shows, against the fake server.

The original `request_openai_api` returned the reply's text for any model, and its models had
`generate(self)`. Today a model gets the key's client in `generate(client)`; the default
`OpenAIModel.parse` gives the text back for chat, completion and Responses API replies, and a
model with the old signature is refused before anything is sent.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import openai
import pytest
from openai.types import CreateEmbeddingResponse
from openai.types.chat import ChatCompletion

from openai_parallel_toolkit import (
    APIKeyManager,
    BatchError,
    KeyState,
    OpenAIModel,
    ParallelToolkit,
    RequestCache,
    RequestFailedError,
    multi_process_one,
    request_openai_api,
)
from openai_parallel_toolkit.models import RawRequest
from openai_parallel_toolkit.testing import FakeOpenAIServer

KEYS = [f"sk-proj-{name}{'x' * 40}{i:04d}" for i, name in enumerate(["alpha", "bravo"])]


@pytest.fixture
def server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(keys=KEYS) as fake:
        yield fake


@pytest.fixture
def manager(server: FakeOpenAIServer) -> APIKeyManager:
    return APIKeyManager(
        api_keys=[{"api_key": k, "api_base": server.base_url} for k in KEYS], make_default=False
    )


class SeedGpt35Turbo(OpenAIModel):
    """The original README's custom model, with the one change: `generate(self, client)`."""

    def __init__(self, content: str, prompt: str, temperature: float) -> None:
        self.content = content
        self.prompt = prompt
        self.temperature = temperature

    def generate(self, client: openai.OpenAI) -> Any:
        return client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=[
                {"role": "system", "content": self.prompt},
                {"role": "user", "content": self.content},
            ],
            temperature=self.temperature,
        )


class OldSignature(SeedGpt35Turbo):
    """The original README's model as it was: `generate(self)` on the global openai module."""

    def generate(self) -> Any:  # type: ignore[override]
        return openai.ChatCompletion.create(model="gpt-3.5-turbo", messages=[])  # type: ignore[attr-defined]


class Completion(OpenAIModel):
    def generate(self, client: openai.OpenAI) -> Any:
        return client.completions.create(model="gpt-3.5-turbo-instruct", prompt="padded  \n")


class Responses(OpenAIModel):
    def generate(self, client: openai.OpenAI) -> Any:
        return client.responses.create(model="gpt-4o-mini", input="from responses")


class Embeddings(OpenAIModel):
    def generate(self, client: openai.OpenAI) -> Any:
        return client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])


class PlainJSON(OpenAIModel):
    def generate(self, client: openai.OpenAI) -> Any:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "dict"}]
        ).model_dump()


class Cached(SeedGpt35Turbo):
    def describe(self) -> dict[str, Any] | None:
        return {"endpoint": "chat.completions", "content": self.content}


def test_seed_custom_model_returns_the_text(manager: APIKeyManager, tmp_path: Path) -> None:
    model = SeedGpt35Turbo(content="hello world", prompt="", temperature=0.7)
    data = request_openai_api(model, manager=manager)
    assert data == "echo: hello world"
    # The original README's process_output.
    output = tmp_path / "out.json"
    with open(output, "w", encoding="utf-8") as file:
        json.dump({"result": data}, file, ensure_ascii=False)
    assert json.loads(output.read_text(encoding="utf-8")) == {"result": "echo: hello world"}
    # raw=True still hands over the client's object.
    raw = request_openai_api(model, manager=manager, raw=True)
    assert isinstance(raw, ChatCompletion)
    assert raw.choices[0].message.content == "echo: hello world"


def test_seed_readme_toolkit_with_a_custom_model(server: FakeOpenAIServer, tmp_path: Path) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"api_keys": KEYS, "api_base": server.base_url}))
    inputs, outputs = tmp_path / "in", tmp_path / "out"
    inputs.mkdir()
    for name in ("a", "b"):
        (inputs / f"{name}.json").write_text(json.dumps({"text": f"hello {name}"}))

    class MyParallelToolkit(ParallelToolkit):
        @staticmethod
        def process_input(file: IO[str]) -> Any:
            return json.load(file)

        @staticmethod
        def process_data(data: Any) -> Any:
            model = SeedGpt35Turbo(content=data["text"], prompt="", temperature=0.7)
            return request_openai_api(model)

        @staticmethod
        def process_output(data: Any, output_file_without_ext: str) -> None:
            with open(output_file_without_ext + ".json", "w", encoding="utf-8") as file:
                json.dump({"result": data}, file, ensure_ascii=False)

    summary = MyParallelToolkit(
        config_path=str(config), input_path=inputs, output_path=outputs, progress=False
    ).run()
    assert summary.ok, summary
    for name in ("a", "b"):
        result = json.loads((outputs / f"{name}.json").read_text(encoding="utf-8"))
        assert result == {"result": f"echo: hello {name}"}


def test_default_parse_for_other_endpoints(manager: APIKeyManager) -> None:
    assert request_openai_api(Completion(), manager=manager) == "echo: padded"
    assert request_openai_api(Responses(), manager=manager) == "echo: from responses"
    embeddings = request_openai_api(Embeddings(), manager=manager)
    assert isinstance(embeddings, CreateEmbeddingResponse)
    assert len(embeddings.data) == 2
    as_dict = request_openai_api(PlainJSON(), manager=manager)
    assert isinstance(as_dict, dict)
    assert as_dict["choices"][0]["message"]["content"] == "echo: dict"


def test_default_parse_of_a_cached_response(
    manager: APIKeyManager, server: FakeOpenAIServer, tmp_path: Path
) -> None:
    with RequestCache(tmp_path / "cache.sqlite") as cache:
        model = Cached(content="twice", prompt="", temperature=0)
        assert request_openai_api(model, manager=manager, cache=cache) == "echo: twice"
        assert request_openai_api(model, manager=manager, cache=cache) == "echo: twice"
        again = request_openai_api(model, manager=manager, cache=cache, raw=True)
        assert isinstance(again, ChatCompletion)
    assert server.total().requests == 1


def test_raw_request_results_stay_json(manager: APIKeyManager) -> None:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "raw"}]}
    for raw in (True, False):
        result = request_openai_api(RawRequest("chat", body), manager=manager, raw=raw)
        assert isinstance(result, dict)
        assert result["choices"][0]["message"]["content"] == "echo: raw"
    answer = request_openai_api(
        RawRequest("responses", {"model": "gpt-4o-mini", "input": "r"}), manager=manager
    )
    assert isinstance(answer, dict) and answer["object"] == "response"


def test_old_generate_signature_fails_before_sending(
    manager: APIKeyManager, server: FakeOpenAIServer
) -> None:
    model = OldSignature(content="hello world", prompt="", temperature=0.7)
    with pytest.raises(TypeError) as info:
        request_openai_api(model, manager=manager)
    assert not isinstance(info.value, RequestFailedError)
    message = str(info.value)
    assert "OldSignature.generate()" in message
    assert "def generate(self, client):" in message
    assert "client.chat.completions.create(" in message
    # Nothing sent, nothing counted against any key.
    assert server.total().requests == 0
    stats = manager.statistics()
    assert stats.requests == 0 and stats.errors == 0
    assert all(key.state is KeyState.ACTIVE for key in stats.keys)
    # The global openai module was left alone.
    assert openai.api_key is None or openai.api_key not in KEYS


def test_old_generate_signature_in_a_batch(
    manager: APIKeyManager, server: FakeOpenAIServer
) -> None:
    data = [("", "one"), ("", "two")]
    with pytest.raises(TypeError, match=r"def generate\(self, client\):") as info:
        multi_process_one(data, OldSignature, temperature=0.7, manager=manager, progress=False)
    assert not isinstance(info.value, BatchError)  # raised once, before the batch starts
    assert server.total().requests == 0


def test_generate_signatures_that_take_a_client(manager: APIKeyManager) -> None:
    class Optional(SeedGpt35Turbo):
        def generate(self, client: openai.OpenAI | None = None, extra: int = 0) -> Any:
            return super().generate(client)  # type: ignore[arg-type]

    class Variadic(SeedGpt35Turbo):
        def generate(self, *args: Any) -> Any:
            return super().generate(*args)

    class KeywordOnly(SeedGpt35Turbo):
        def generate(self, *, client: openai.OpenAI) -> Any:  # type: ignore[override]
            return super().generate(client)

    for cls in (Optional, Variadic):
        assert request_openai_api(cls("ok", "", 0), manager=manager) == "echo: ok"
    with pytest.raises(TypeError, match="def generate"):
        request_openai_api(KeywordOnly("no", "", 0), manager=manager)
