"""Process a folder of files in parallel, resumably: the original toolkit's `ParallelToolkit`.

    python examples/file_processing.py [CONFIG] [--input DIR] [--output DIR]

Every JSON file ``{"text": ...}`` under --input (default: examples/data/articles/, sub-folders
included) goes through the three hooks of `MyParallelToolkit`; each result is written to the
same relative path under --output (default: output/file_processing/). A file whose output
exists is skipped, so running the command again only does what is left.

CONFIG is a JSON or YAML key file; without one, keys come from OPENAI_API_KEY* variables, else
the example runs against the bundled fake OpenAI server (which answers "echo: <text>").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import IO, Any

from _setup import key_pool

from openai_parallel_toolkit import Gpt35Turbo, ParallelToolkit, request_openai_api

DEFAULT_INPUT = Path(__file__).resolve().parent / "data" / "articles"
DEFAULT_OUTPUT = Path("output") / "file_processing"


class MyParallelToolkit(ParallelToolkit):
    @staticmethod
    def process_input(file: IO[str]) -> Any:
        # Read the file, the returned data will be the input for process_data
        return json.load(file)

    @staticmethod
    def process_data(data: Any) -> Any:
        # Call OpenAI API here, several call methods are provided for reference
        # For example, to use GPT-3.5, you can make the call as follows:
        model = Gpt35Turbo(
            content=data["text"], prompt="Summarise the text in one sentence.", temperature=0.7
        )
        result = request_openai_api(model)
        return result

    @staticmethod
    def process_output(data: Any, output_file_without_ext: str) -> None:
        # Process the result returned by process_data and write the result to a file
        output_file = output_file_without_ext + ".json"
        with open(output_file, "w", encoding="utf-8") as file:
            json.dump({"result": data}, file, ensure_ascii=False)


def output_files(folder: Path) -> list[Path]:
    """The files under `folder`, sorted, without the toolkit's hidden state folder."""
    return sorted(
        path
        for path in folder.rglob("*")
        if path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("config", nargs="?", help="JSON or YAML key file")
    parser.add_argument("--input", type=Path, default=DEFAULT_INPUT, help="input folder or file")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT, help="output folder")
    args = parser.parse_args(argv[1:])

    with key_pool(args.config, name="files"):
        # No config_path: key_pool() set up the default pool, which the toolkit and the
        # hooks' request_openai_api() use. With your own file you would write, as in the
        # original: MyParallelToolkit(config_path="config.json", input_path=..., output_path=...)
        summary = MyParallelToolkit(input_path=args.input, output_path=args.output).run()

    print(f"Summary: {summary}")
    files = output_files(args.output)
    print(f"{len(files)} output files in {args.output}:")
    for path in files:
        print(f"  {path.relative_to(args.output).as_posix()}")
    # One file from the top folder and one from a sub-folder, if any: outputs mirror inputs.
    shown = files[:1] + [path for path in files if path.parent != args.output][:1]
    for path in dict.fromkeys(shown):
        print(f"{path.relative_to(args.output).as_posix()}: {path.read_text(encoding='utf-8')}")
    if summary.processed == 0 and summary.skipped and not summary.failed:
        print(
            f"Resume: all {summary.skipped} files were already done, so this run skipped them. "
            f"Delete {args.output} to process them again."
        )
    else:
        print("Run the same command again: every file already done is skipped (resume).")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
