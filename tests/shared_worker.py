"""A worker process for test_shared_state.py: requests through a key pool shared via Redis.

python shared_worker.py CONFIG COUNT [LEASE_SECONDS]

CONFIG is a JSON key file with ``shared_state``; prints ``READY`` once its pool is built and
``DONE <successes> <429s>`` at the end. COUNT 0 sends until killed.
"""

from __future__ import annotations

import itertools
import sys

from openai_parallel_toolkit import APIKeyManager, ChatModel, PoolOptions, RedisStore
from openai_parallel_toolkit.config import load_config
from openai_parallel_toolkit.parallel import multi_process_one

if __name__ == "__main__":
    config_path, count = sys.argv[1], int(sys.argv[2])
    lease = float(sys.argv[3]) if len(sys.argv) > 3 else 10.0
    config = load_config(config_path)
    assert config.shared_state is not None
    store = RedisStore(config.shared_state, lease_seconds=lease)
    with APIKeyManager(config=config, make_default=False, options=PoolOptions(store=store)) as pool:
        print("READY", flush=True)
        batches = itertools.count() if count == 0 else range(1)
        for _ in batches:
            size = count or 20
            multi_process_one(
                [("", f"item {i}") for i in range(size)], ChatModel, manager=pool, threads=20
            )
        stats = pool.statistics()
        print(f"DONE {stats.successes} {stats.rate_limited}", flush=True)
    store.close()
