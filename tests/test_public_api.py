"""The public surface: one sorted, complete __all__, typed, free of aiohttp types."""

from __future__ import annotations

import inspect
import re
from importlib import resources
from pathlib import Path

import ruxa_async
from ruxa_async import RuxaClient, TaskHandle


def _isort_key(name: str) -> tuple[int, str]:
    if name.isupper():
        return (0, name)
    if name[0].isupper():
        return (1, name)
    return (2, name)


def test_all_is_sorted_and_unique() -> None:
    """__all__ is in one stable order with no repeats."""
    names = list(ruxa_async.__all__)
    assert names == sorted(names, key=_isort_key)
    assert len(names) == len(set(names))


def test_all_is_complete() -> None:
    """Every public class or function the package namespace holds is exported, and exists."""
    for name in ruxa_async.__all__:
        assert hasattr(ruxa_async, name), name
    public = {
        name
        for name, value in vars(ruxa_async).items()
        if not name.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and getattr(value, "__module__", "").startswith("ruxa_async")
    }
    assert public <= set(ruxa_async.__all__)


def test_package_is_typed() -> None:
    """py.typed ships with the package."""
    assert resources.files("ruxa_async").joinpath("py.typed").is_file()


def test_version_is_defined_once() -> None:
    """The package version matches pyproject.toml."""
    pyproject = Path(__file__).resolve().parent.parent / "pyproject.toml"
    match = re.search(r'^version = "([^"]+)"', pyproject.read_text(), re.MULTILINE)
    assert match is not None
    assert ruxa_async.__version__ == match.group(1)


def test_no_aiohttp_types_in_the_client_api() -> None:
    """No public method of the client or handle mentions an aiohttp type."""
    for cls in (RuxaClient, TaskHandle):
        for name, member in inspect.getmembers(cls):
            if name.startswith("_") or not callable(member):
                continue
            assert "aiohttp" not in str(inspect.signature(member)), f"{cls.__name__}.{name}"


def test_public_names_have_docstrings() -> None:
    """Every exported class and function explains itself."""
    for name in ruxa_async.__all__:
        value = getattr(ruxa_async, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert inspect.getdoc(value), name


def test_public_names_live_in_ruxa_async() -> None:
    """Every exported class and function reports ``ruxa_async`` as its module (docs, reprs)."""
    for name in ruxa_async.__all__:
        value = getattr(ruxa_async, name)
        if inspect.isclass(value) or inspect.isfunction(value):
            assert value.__module__ == "ruxa_async", name
