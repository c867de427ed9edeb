"""The public names: `__all__` of the package lists exactly what it exports, in order.

As httpx's `test_all_imports_are_exported`: every name bound in the package that does not start
with an underscore (plus ``__version__``) is in `__all__`, and nothing else is. Submodules are
left out: importing one binds it on the package, which does not make it a curated export.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import types

import pytest

import openai_parallel_toolkit

INCLUDED_PRIVATE_MEMBERS = {"__version__"}


def _ruff_order(name: str) -> tuple[int, list[float | str]]:
    """The order ruff's RUF022 keeps `__all__` in: CONSTANTS, then Classes, then the rest, each
    in natural order (``Gpt4`` before ``Gpt35Turbo``; a number with a leading zero reads as a
    fraction, as in ruff's natural sort: ``Gpt35Turbo0613`` before ``Gpt35Turbo16K``)."""
    if len(name) > 1 and name.isupper():
        kind = 0
    elif name[:1].isupper():
        kind = 1
    else:
        kind = 2
    return kind, [_number(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _number(digits: str) -> float:
    return float(f"0.{digits}") if digits.startswith("0") else float(digits)


def _submodule_names() -> list[str]:
    package = openai_parallel_toolkit
    return sorted(
        info.name for info in pkgutil.walk_packages(package.__path__, f"{package.__name__}.")
    )


def test_all_lists_exactly_the_public_names() -> None:
    exported = {
        name
        for name, value in vars(openai_parallel_toolkit).items()
        if not isinstance(value, types.ModuleType)
        and (not name.startswith("_") or name in INCLUDED_PRIVATE_MEMBERS)
    }
    assert set(openai_parallel_toolkit.__all__) == exported
    assert len(openai_parallel_toolkit.__all__) == len(exported), "a name is listed twice"


def test_all_is_sorted() -> None:
    names = openai_parallel_toolkit.__all__
    assert names == sorted(names, key=_ruff_order)


@pytest.mark.parametrize("module_name", _submodule_names())
def test_submodule_all_names_existing_public_attributes(module_name: str) -> None:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    if names is None:  # a docstring-only package or a __main__: nothing exported
        return
    missing = [name for name in names if not hasattr(module, name)]
    assert not missing, f"{module_name}.__all__ names missing attributes: {missing}"
    private = [name for name in names if name.startswith("_")]
    assert not private, f"{module_name}.__all__ names private attributes: {private}"
    assert len(names) == len(set(names)), f"{module_name}.__all__ lists a name twice"
