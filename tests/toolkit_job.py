"""A ParallelToolkit job run as a subprocess by test_toolkit_interrupt.py.

python toolkit_job.py CONFIG INPUT OUTPUT THREADS
"""

from __future__ import annotations

import json
import sys
from typing import Any

from openai_parallel_toolkit import Gpt35Turbo, ParallelToolkit, multi_process_one


class Job(ParallelToolkit):
    def process_input(self, file: Any) -> Any:
        return json.load(file)

    def process_data(self, data: Any) -> Any:
        return multi_process_one([("p", item) for item in data["items"]], Gpt35Turbo)

    def process_output(self, data: Any, output_file_without_ext: str) -> None:
        with open(output_file_without_ext + ".json", "w", encoding="utf-8") as file:
            # Written in pieces, so a kill can land in the middle of a file.
            file.write('{"results": [')
            for i, result in enumerate(data):
                file.write(("," if i else "") + json.dumps(result))
                file.flush()
            file.write("]}")


if __name__ == "__main__":
    config, input_path, output_path, threads = sys.argv[1:5]
    summary = Job(config, input_path, output_path, num_threads=int(threads)).run()
    print(
        f"SUMMARY processed={summary.processed} skipped={summary.skipped} "
        f"failed={len(summary.failed)} interrupted={summary.interrupted}",
        flush=True,
    )
