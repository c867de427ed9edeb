"""Where limiter state lives: the limit groups' budgets and the keys' health, by name.

The key pool asks its store for this state instead of owning it, so that a store shared by
several processes can take the place of the in-memory one without changing the pool.
"""

from .base import GroupSpec, KeyHealth, LimiterStore
from .memory import MemoryStore
from .redis import RedisStore, RedisStoreStats

__all__ = ["GroupSpec", "KeyHealth", "LimiterStore", "MemoryStore", "RedisStore", "RedisStoreStats"]
