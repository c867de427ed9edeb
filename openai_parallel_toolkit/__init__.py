"""openai-parallel-toolkit: push large volumes of text through OpenAI-compatible APIs at the full
rate limit of many keys, without losing or re-paying for finished work.

Quick start::

    from openai_parallel_toolkit import APIKeyManager, Gpt35Turbo, request_openai_api

    APIKeyManager(config_path="config.json")
    print(request_openai_api(Gpt35Turbo(content="hello", prompt="Be brief.")))

Importing the package has no side effects: no environment is read, no logging is configured and
no network is touched until a pool is built or a request is sent.
"""

from ._store import LimiterStore, MemoryStore, RedisStore, RedisStoreStats
from .batch import (
    BatchJob,
    BatchJobStatus,
    BatchLimits,
    BatchRunOptions,
    BatchRunSummary,
    run_batch_job,
)
from .cache import RequestCache, ResponseStore, use_cache
from .clock import Clock, SystemClock
from .compat import ChatCompletion, Completion, Embedding, append_auth_from_config
from .config import (
    KeyConfig,
    ToolkitConfig,
    config_from_env,
    config_from_keys,
    config_from_mapping,
    load_config,
)
from .costs import CostMeter, UsageLedger
from .errors import (
    Action,
    BudgetReachedError,
    ConfigError,
    CostUnknownError,
    NoKeysAvailableError,
    RequestFailedError,
    ResultsFileError,
    SlotTimeoutError,
    TokenizerUnavailableError,
    ToolkitError,
    Verdict,
    classify,
    mask_key,
)
from .headers import RateLimitHeaders, parse_reset
from .jobs import JobSummary, run_jsonl_job
from .keys import (
    APIKeyManager,
    KeyState,
    KeyStats,
    Lease,
    PoolStats,
    get_default_manager,
    reset_default_manager,
    use_manager,
)
from .knobs import Knobs
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
from .options import PoolOptions
from .parallel import (
    BatchError,
    amulti_process_one,
    aparallel_map,
    default_concurrency,
    multi_process_one,
    parallel_map,
)
from .request import RetryPolicy, arequest_openai_api, request_openai_api
from .stats import UsageReport, UsageRow
from .tokens import (
    encoding_for,
    estimate_chat_tokens,
    estimate_tokens,
    num_tokens_from_string,
    split_string_by_tokens,
)
from .toolkit import FileFailure, ParallelToolkit, RunSummary

__version__ = "2.0.0.dev0"

__all__ = [
    "APIKeyManager",
    "Action",
    "BatchError",
    "BatchJob",
    "BatchJobStatus",
    "BatchLimits",
    "BatchRunOptions",
    "BatchRunSummary",
    "BudgetReachedError",
    "ChatCompletion",
    "ChatModel",
    "Clock",
    "Completion",
    "CompletionModel",
    "ConfigError",
    "CostMeter",
    "CostUnknownError",
    "Embedding",
    "EmbeddingModel",
    "FileFailure",
    "Gpt4",
    "Gpt35Turbo",
    "Gpt35Turbo0613",
    "Gpt35Turbo16K",
    "JobSummary",
    "KeyConfig",
    "KeyState",
    "KeyStats",
    "Knobs",
    "Lease",
    "LimitGroup",
    "LimiterStore",
    "MemoryStore",
    "NoKeysAvailableError",
    "OpenAIModel",
    "ParallelToolkit",
    "PoolOptions",
    "PoolStats",
    "RateLimitHeaders",
    "RedisStore",
    "RedisStoreStats",
    "RequestCache",
    "RequestFailedError",
    "ResponseStore",
    "ResultsFileError",
    "RetryPolicy",
    "RunSummary",
    "SlotTimeoutError",
    "SystemClock",
    "TokenizerUnavailableError",
    "ToolkitConfig",
    "ToolkitError",
    "UsageLedger",
    "UsageReport",
    "UsageRow",
    "Verdict",
    "__version__",
    "amulti_process_one",
    "aparallel_map",
    "append_auth_from_config",
    "arequest_openai_api",
    "classify",
    "config_from_env",
    "config_from_keys",
    "config_from_mapping",
    "default_concurrency",
    "encoding_for",
    "estimate_chat_tokens",
    "estimate_tokens",
    "get_default_manager",
    "load_config",
    "mask_key",
    "multi_process_one",
    "num_tokens_from_string",
    "parallel_map",
    "parse_reset",
    "request_openai_api",
    "reset_default_manager",
    "run_batch_job",
    "run_jsonl_job",
    "split_string_by_tokens",
    "use_cache",
    "use_manager",
]
