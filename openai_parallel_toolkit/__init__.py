"""openai-parallel-toolkit: push large volumes of text through OpenAI-compatible APIs at the full
rate limit of many keys, without losing or re-paying for finished work.

Quick start::

    from openai_parallel_toolkit import APIKeyManager, Gpt35Turbo, request_openai_api

    APIKeyManager(config_path="config.json")
    print(request_openai_api(Gpt35Turbo(content="hello", prompt="Be brief.")))

Importing the package has no side effects: no environment is read, no logging is configured and
no network is touched until a pool is built or a request is sent.
"""

from .clock import Clock, SystemClock
from .config import (
    KeyConfig,
    ToolkitConfig,
    config_from_env,
    config_from_keys,
    config_from_mapping,
    load_config,
)
from .errors import (
    Action,
    ConfigError,
    NoKeysAvailableError,
    RequestFailedError,
    TokenizerUnavailableError,
    ToolkitError,
    Verdict,
    classify,
    mask_key,
)
from .headers import RateLimitHeaders, parse_reset
from .keys import (
    APIKeyManager,
    KeyState,
    KeyStats,
    Lease,
    PoolStats,
    get_default_manager,
    reset_default_manager,
)
from .limiter import LimitGroup
from .models import (
    ChatModel,
    CompletionModel,
    EmbeddingModel,
    Gpt4,
    Gpt35Turbo,
    Gpt35Turbo0613,
    Gpt35Turbo16K,
    OpenAIModel,
)
from .request import RetryPolicy, request_openai_api
from .tokens import (
    encoding_for,
    estimate_chat_tokens,
    estimate_tokens,
    num_tokens_from_string,
    split_string_by_tokens,
)

__version__ = "1.0.0.dev0"

__all__ = [
    "APIKeyManager",
    "Action",
    "ChatModel",
    "Clock",
    "CompletionModel",
    "ConfigError",
    "EmbeddingModel",
    "Gpt4",
    "Gpt35Turbo",
    "Gpt35Turbo0613",
    "Gpt35Turbo16K",
    "KeyConfig",
    "KeyState",
    "KeyStats",
    "Lease",
    "LimitGroup",
    "NoKeysAvailableError",
    "OpenAIModel",
    "PoolStats",
    "RateLimitHeaders",
    "RequestFailedError",
    "RetryPolicy",
    "SystemClock",
    "TokenizerUnavailableError",
    "ToolkitConfig",
    "ToolkitError",
    "Verdict",
    "__version__",
    "classify",
    "config_from_env",
    "config_from_keys",
    "config_from_mapping",
    "encoding_for",
    "estimate_chat_tokens",
    "estimate_tokens",
    "get_default_manager",
    "load_config",
    "mask_key",
    "num_tokens_from_string",
    "parse_reset",
    "request_openai_api",
    "reset_default_manager",
    "split_string_by_tokens",
]
