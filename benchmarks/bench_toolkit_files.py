"""ParallelToolkit over many small files: throughput and peak memory as the file count grows.

    python benchmarks/bench_toolkit_files.py [--counts 1000,10000,100000] [--api 2000]

Each count runs in a fresh subprocess (so its peak RSS is its own): it writes that many small
JSON files, processes them with hooks that do no API call (the toolkit's own cost), then runs
again (everything skipped: the resume path). `--api N` adds a run of N files whose hook sends
one chat request each to the bundled fake server. Memory that stays flat from 10,000 to
100,000 files shows that inputs are listed and read lazily.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _rss_mb() -> float:
    # ru_maxrss is in kilobytes on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(count: int, api: bool) -> None:
    from openai_parallel_toolkit import (
        APIKeyManager,
        ChatModel,
        ParallelToolkit,
        request_openai_api,
    )

    class Job(ParallelToolkit):
        def process_input(self, file: Any) -> Any:
            return json.load(file)

        def process_data(self, data: Any) -> Any:
            if api:
                return request_openai_api(ChatModel(content=data["text"]))
            return data["text"].upper()

        def process_output(self, data: Any, output_file_without_ext: str) -> None:
            with open(output_file_without_ext + ".json", "w", encoding="utf-8") as file:
                json.dump({"result": data}, file)

    with tempfile.TemporaryDirectory() as tmp:
        inputs = Path(tmp) / "in"
        for folder in range(max(1, count // 10_000)):
            (inputs / f"part{folder}").mkdir(parents=True)
        for i in range(count):
            path = inputs / f"part{i % max(1, count // 10_000)}" / f"doc{i:07d}.json"
            path.write_text(json.dumps({"text": f"document number {i}"}))
        baseline = _rss_mb()
        server = None
        if api:
            from openai_parallel_toolkit.testing import FakeOpenAIServer

            server = FakeOpenAIServer().start()
            base = server.base_url
        else:
            base = "http://127.0.0.1:9/v1"  # never contacted
        keys = [{"api_key": f"sk-bench-000000000000{i:04d}", "api_base": base} for i in range(4)]
        manager = APIKeyManager(api_keys=keys)
        output = Path(tmp) / "out"
        started = time.perf_counter()
        first = Job(input_path=inputs, output_path=output, manager=manager, progress=False).run()
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        second = Job(input_path=inputs, output_path=output, manager=manager, progress=False).run()
        second_s = time.perf_counter() - started
        if server is not None:
            server.stop()
        assert first.processed == count and not first.failed, first
        assert second.skipped == count, second
        print(
            json.dumps(
                {
                    "count": count,
                    "api": api,
                    "files_per_s": count / first_s,
                    "resume_files_per_s": count / second_s,
                    "baseline_mb": baseline,
                    "peak_mb": _rss_mb(),
                }
            )
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--counts", default="1000,10000,100000")
    parser.add_argument("--api", type=int, default=2000, help="files for the run with requests")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--child-api", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        _child(args.child, args.child_api)
        return 0
    runs = [(int(c), False) for c in args.counts.split(",") if c] + (
        [(args.api, True)] if args.api else []
    )
    print(
        f"{'files':>8} {'hooks':>10} {'files/s':>9} {'resume/s':>9} {'RSS base':>9} {'RSS peak':>9}"
    )
    for count, api in runs:
        command = [sys.executable, __file__, "--child", str(count)]
        if api:
            command.append("--child-api")
        env = {k: v for k, v in os.environ.items() if not k.startswith("OPENAI_")}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        row = json.loads(result.stdout.strip().splitlines()[-1])
        hooks = "1 request" if api else "local"
        print(
            f"{row['count']:>8} {hooks:>10} {row['files_per_s']:>9.0f} "
            f"{row['resume_files_per_s']:>9.0f} {row['baseline_mb']:>7.0f}MB "
            f"{row['peak_mb']:>7.0f}MB"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
