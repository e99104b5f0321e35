"""The simulator owes the SDK nothing, and the two agree on what the service accepts."""

from __future__ import annotations

import ast
import itertools
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from ruxa_async import InvalidInputError, catalog
from ruxa_async.testing import _rules
from ruxa_async.testing._rules import FieldRule, InputRules, ModelRule

TESTING = Path(__file__).resolve().parent.parent / "ruxa_async" / "testing"
# Modules outside the simulator that it may import: plumbing that carries no SDK logic and
# imports nothing from ruxa_async itself (checked below).
SHARED = ("ruxa_async._signals",)


def _imported(node: ast.AST) -> list[str]:
    """The absolute module names an import statement in ruxa_async/testing/ refers to."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if not isinstance(node, ast.ImportFrom):
        return []
    if node.level == 0:
        return [node.module or ""]
    package = ["ruxa_async", "testing"][: 2 - node.level + 1]
    base = ".".join(package) or "."
    if node.module:
        return [f"{base}.{node.module}"]
    return [f"{base}.{alias.name}" for alias in node.names]


def test_the_simulator_imports_nothing_from_the_sdk() -> None:
    """No module of ruxa_async.testing imports a ruxa_async module outside ruxa_async.testing."""
    offenders = [
        f"{path.name}:{getattr(node, 'lineno', '?')} imports {name}"
        for path in sorted(TESTING.glob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        for name in _imported(node)
        if (name == "ruxa_async" or name.startswith(("ruxa_async.", ".")))
        and not name.startswith("ruxa_async.testing")
        and name not in SHARED
    ]
    assert offenders == []


def test_what_the_simulator_shares_imports_nothing_from_the_package() -> None:
    """Each module the simulator may share with the SDK imports no ruxa_async module at all."""
    for module in SHARED:
        path = TESTING.parent.joinpath(*module.split(".")[1:]).with_suffix(".py")
        names = [
            n for node in ast.walk(ast.parse(path.read_text("utf-8"))) for n in _imported(node)
        ]
        assert names, module
        assert not [n for n in names if n.startswith(("ruxa_async", "."))], module


def _variants() -> list[InputRules]:
    """Every combination of the simulator's InputRules switches (bools and Literals)."""
    hints = typing.get_type_hints(InputRules)
    options = []
    for field in attrs.fields(InputRules):
        hint = hints[field.name]
        values = (False, True) if hint is bool else typing.get_args(hint)
        assert values, f"InputRules.{field.name}: cannot enumerate {hint!r}"
        options.append([(field.name, value) for value in values])
    return [InputRules(**dict(combo)) for combo in itertools.product(*options)]


def _probes(rule: FieldRule, spec: catalog.FieldSpec | None) -> Iterator[Any]:
    """Values to try in one field: listed ones, their case variants, wrong types, limits."""
    listed = {*(rule.values or ()), *(rule.kie_values or ()), *((spec and spec.choices) or ())}
    limits = {n for n in (rule.limit, spec and spec.max_length, spec and spec.max_items) if n}
    if rule.type == "string":
        for value in sorted(listed):
            yield from (value, value.upper(), value.lower(), value.title())
        yield from ("not-a-listed-value", "", "  ", "x", 7, True, ["x"])
        for n in sorted(limits):
            yield from ("p" * n, "p" * (n + 1))
    elif rule.type == "boolean":
        yield from (True, False, "true", 1, None)
    else:
        yield from ([], ["https://e.com/a.png"], "https://e.com/a.png", [7], [""])
        for n in sorted(limits):
            yield from (["https://e.com/a.png"] * n, ["https://e.com/a.png"] * (n + 1))


def _sdk_accepts(model: str, data: Mapping[str, Any]) -> bool:
    try:
        catalog.validate_input(model, data)
    except InvalidInputError:
        return False
    return True


def _base_input(rule: ModelRule, variants: list[InputRules]) -> dict[str, Any]:
    """An input every variant accepts: each field some variant requires, with a plain value."""
    plain = {"string": "x", "boolean": False, "string[]": ["https://e.com/a.png"]}
    base = {
        field.name: field.values[0] if field.values else plain[field.type]
        for field in rule.fields
        if any(field.is_required(r) for r in variants)
    }
    refused = [r for r in variants if _rules.check_input(rule, base, r) is not None]
    assert refused == [], f"{rule.name}: {base} is refused under {refused[0]}"
    return base


def test_the_catalogue_rejects_exactly_what_every_reading_of_the_reference_rejects() -> None:
    """Catalogue vs simulator: same models and fields; the SDK refuses an input iff all readings do.

    For every documented model, field and probe value (listed values and their
    case variants, blanks, wrong types, limits and one past them, a missing
    field, an undocumented field), the SDK's pre-validation must accept the
    input exactly when at least one reading of the reference (one combination
    of the simulator's InputRules switches) accepts it: it must never refuse
    what the service may accept, nor let through what the service surely refuses.
    """
    variants = _variants()
    diffs: list[str] = []
    if set(catalog.MODELS) != set(_rules.DOCUMENTED):
        diffs.append(
            f"models: catalogue {sorted(catalog.MODELS)}, simulator {sorted(_rules.DOCUMENTED)}"
        )
    for name in sorted(set(catalog.MODELS) & set(_rules.DOCUMENTED)):
        spec, rule = catalog.MODELS[name], _rules.DOCUMENTED[name]
        ours = {f.name: f.type for f in spec.fields}
        theirs = {f.name: f.type for f in rule.fields}
        if ours != theirs:
            diffs.append(f"{name}: catalogue fields {ours}, simulator fields {theirs}")
        if spec.callback_required != (rule.callback == "marked"):
            diffs.append(
                f"{name}: callback_required {spec.callback_required}, simulator {rule.callback}"
            )
        base = _base_input(rule, variants)
        cases: list[tuple[str, dict[str, Any]]] = [("base", base)]
        for field in rule.fields:
            without = {k: v for k, v in base.items() if k != field.name}
            cases.append((f"no {field.name}", without))
            for value in _probes(field, spec.field(field.name)):
                shown = repr(value) if len(repr(value)) < 40 else f"<{len(value)} long>"
                cases.append((f"{field.name}={shown}", {**base, field.name: value}))
        cases = list({label: (label, data) for label, data in cases}.values())
        cases.append(("undocumented field", {**base, "zz_undocumented": "x"}))
        for label, data in cases:
            service = any(_rules.check_input(rule, data, r) is None for r in variants)
            sdk = _sdk_accepts(name, data)
            if sdk != service:
                verdict = "accepts" if sdk else "refuses"
                diffs.append(
                    f"{name} {label}: the SDK {verdict}, the service "
                    f"{'may accept' if service else 'refuses under every reading'}"
                )
    assert diffs == [], "\n".join(diffs)
