"""What the simulated service accepts: its documented models and their input rules.

Written from the wire reference (``shared/ruxa-api.md``; sections cited as §),
never from the SDK's catalogue, so that a test can hold one against the other.
Where the reference is unsure, :class:`InputRules` plays each reading; its
defaults say which reading the simulator takes and why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Literal

import attrs
from attrs import validators as v

__all__ = [
    "DOCUMENTED",
    "FieldRule",
    "InputRules",
    "ModelRule",
    "accepted_models",
    "check_create",
    "check_input",
    "model_kind",
    "price_table",
]

# §6.2 (nano-banana's image_size) and §6.4 (nano-banana-pro's aspect_ratio, ZH page): same list.
_ASPECTS = ("1:1", "9:16", "16:9", "3:4", "4:3", "3:2", "2:3", "5:4", "4:5", "21:9", "auto")


@attrs.frozen(kw_only=True)
class InputRules:
    """The readings the simulator takes where the reference leaves acceptance open.

    ``enum_case``: ``"exact"`` (default) accepts only the listed spellings, as
    every value table lists them; ``"insensitive"`` plays a service that folds
    case (§8 #11: ``1k`` on Ruxa's page, ``1K`` on kie's). ``spellings``:
    ``"ruxa"`` (default) uses Ruxa's own value lists; ``"kie"`` uses kie.ai's
    where they differ (``resolution`` ``1K/2K/4K``, §6.4, §9).
    ``marked_required``: the DOC tables mark a few fields required that every
    working example omits: nano-banana-edit's ``output_format`` and
    ``image_size`` (both listed with a default, §6.3) and nano-banana-pro's
    ``callBackUrl`` (the blog's pro example has none, §6.4, §8 #4). False
    (default) follows the examples; True plays the markers.
    ``kie_limits``: True (default) enforces kie.ai's limits, the reference's
    best guess where Ruxa is silent (§7, §9: prompt <= 5000 characters,
    ``image_urls`` <= 10, ``image_input`` <= 8); False plays a service
    without them (§13 Q11). ``presumed_lists``: True (default) checks values
    the reference only presumes (nano-banana-edit's ``image_size`` list is not
    readable, presumed equal to nano-banana's, §6.3, §13 Q15); False accepts
    any string there. ``extra_fields``: input fields a model does not
    document are ``"accept"``-ed (default: nothing says they are refused) or
    ``"reject"``-ed.
    """

    enum_case: Literal["exact", "insensitive"] = attrs.field(
        default="exact", validator=v.in_(("exact", "insensitive"))
    )
    spellings: Literal["ruxa", "kie"] = attrs.field(
        default="ruxa", validator=v.in_(("ruxa", "kie"))
    )
    marked_required: bool = attrs.field(default=False, validator=v.instance_of(bool))
    kie_limits: bool = attrs.field(default=True, validator=v.instance_of(bool))
    presumed_lists: bool = attrs.field(default=True, validator=v.instance_of(bool))
    extra_fields: Literal["accept", "reject"] = attrs.field(
        default="accept", validator=v.in_(("accept", "reject"))
    )


@attrs.frozen(kw_only=True)
class FieldRule:
    """One input field as the reference describes it.

    ``required`` is ``"yes"``, ``"no"`` or ``"marked"`` (required only under
    :attr:`InputRules.marked_required`). ``values`` is the allowed list (Ruxa's
    spelling), ``kie_values`` kie.ai's where it differs; ``presumed`` marks a
    list the reference only infers. ``limit`` is kie.ai's maximum length of a
    string or number of items of a list.
    """

    name: str
    type: Literal["string", "boolean", "string[]"]
    required: Literal["yes", "no", "marked"] = "no"
    values: tuple[str, ...] | None = None
    kie_values: tuple[str, ...] | None = None
    presumed: bool = False
    limit: int | None = None
    source: str = ""

    def allowed(self, rules: InputRules) -> tuple[str, ...] | None:
        """The values accepted under ``rules`` (None: any string)."""
        if self.presumed and not rules.presumed_lists:
            return None
        if rules.spellings == "kie" and self.kie_values is not None:
            return self.kie_values
        return self.values

    def is_required(self, rules: InputRules) -> bool:
        """Whether the field must be present under ``rules``."""
        return self.required == "yes" or (self.required == "marked" and rules.marked_required)


@attrs.frozen(kw_only=True)
class ModelRule:
    """A documented model: its kind, price (credits), input fields and callback rule."""

    name: str
    kind: Literal["image", "video"]
    price: float
    fields: tuple[FieldRule, ...]
    callback: Literal["no", "marked"] = "no"
    source: str = ""

    def field(self, name: str) -> FieldRule | None:
        """The rule of input field ``name``, or None."""
        for rule in self.fields:
            if rule.name == name:
                return rule
        return None


def _prompt(source: str) -> FieldRule:
    return FieldRule(name="prompt", type="string", required="yes", limit=5000, source=source)


_SORA_FIELDS = (
    _prompt("§6.5 DOC: required"),
    FieldRule(name="input_reference", type="string", source="§6.5: a URL string (BLOG)"),
    FieldRule(name="watermark", type="boolean", source="§6.5"),
    FieldRule(name="private", type="boolean", source="§6.5"),
    FieldRule(name="character_url", type="string", source="§6.5"),
    FieldRule(name="character_timestamps", type="string", source="§6.5"),
    FieldRule(name="metadata", type="string", source="§6.5"),
    FieldRule(name="character_from_task", type="string", source="§6.5"),
    FieldRule(name="character_create", type="boolean", source="§6.5"),
    FieldRule(name="style", type="string", values=("winter", "comic", "news"), source="§6.5"),
)

DOCUMENTED: Mapping[str, ModelRule] = {
    rule.name: rule
    for rule in (
        ModelRule(
            name="google/nano-banana",
            kind="image",
            price=4.0,
            source="§6.2; price: kie registry, §6.6",
            fields=(
                _prompt("§6.2: treat as required; kie: <= 5000"),
                FieldRule(name="output_format", type="string", values=("png", "jpeg")),
                FieldRule(name="image_size", type="string", values=_ASPECTS),
            ),
        ),
        ModelRule(
            name="google/nano-banana-edit",
            kind="image",
            price=4.0,
            source="§6.3; price: kie registry, §6.6",
            fields=(
                _prompt("§6.3: treat as required; kie: <= 5000"),
                FieldRule(
                    name="image_urls",
                    type="string[]",
                    required="yes",
                    limit=10,
                    source="§6.3: name and limit from kie (§9)",
                ),
                FieldRule(
                    name="output_format",
                    type="string",
                    required="marked",
                    values=("png", "jpeg"),
                    source="§6.3: marked required, default png",
                ),
                FieldRule(
                    name="image_size",
                    type="string",
                    required="marked",
                    values=_ASPECTS,
                    presumed=True,
                    source="§6.3: marked required, default 1:1, list presumed",
                ),
            ),
        ),
        ModelRule(
            name="google/nano-banana-pro",
            kind="image",
            price=18.0,
            callback="marked",
            source="§6.4; price: kie registry at 1K/2K, §6.6",
            fields=(
                _prompt("§6.4: treat as required"),
                FieldRule(name="image_input", type="string[]", limit=8, source="§6.4: kie <= 8"),
                FieldRule(name="aspect_ratio", type="string", values=_ASPECTS),
                FieldRule(
                    name="resolution",
                    type="string",
                    values=("1k", "2k", "4k"),
                    kie_values=("1K", "2K", "4K"),
                    source="§6.4, §8 #11",
                ),
                FieldRule(name="output_format", type="string", values=("png", "jpg")),
            ),
        ),
        ModelRule(
            name="sora-2",
            kind="video",
            price=10.0,
            source="§6.5 (blog matrix); price: community code, §6.6",
            fields=(
                *_SORA_FIELDS[:1],
                FieldRule(name="seconds", type="string", values=("10", "15")),
                FieldRule(name="size", type="string", values=("720x1280", "1280x720")),
                *_SORA_FIELDS[1:],
            ),
        ),
        ModelRule(
            name="sora-2-hd",
            kind="video",
            # No source prices sora-2-hd; three times sora-2 is a placeholder.
            price=30.0,
            source="§6.5 (blog matrix: 25 s and HD sizes are sora-2-hd's)",
            fields=(
                *_SORA_FIELDS[:1],
                FieldRule(name="seconds", type="string", values=("10", "15", "25")),
                FieldRule(
                    name="size",
                    type="string",
                    values=("720x1280", "1280x720", "1024x1792", "1792x1024"),
                ),
                *_SORA_FIELDS[1:],
            ),
        ),
    )
}


def accepted_models(
    accept: str | frozenset[str], configured: Iterable[str]
) -> frozenset[str] | None:
    """The model names a create may use (None: any), per ``SimConfig.accept_models``."""
    if accept == "any":
        return None
    names = DOCUMENTED.keys() if isinstance(accept, str) else accept
    return frozenset(names) | frozenset(configured)


def price_table(overrides: Mapping[str, float]) -> dict[str, float]:
    """Credits per task by model: the documented models' prices, then ``overrides``."""
    return {**{name: rule.price for name, rule in DOCUMENTED.items()}, **overrides}


def model_kind(model: str) -> str:
    """``"video"`` for the documented video models, ``"image"`` otherwise."""
    rule = DOCUMENTED.get(model)
    return rule.kind if rule is not None else "image"


def _type_ok(kind: str, value: Any) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    return isinstance(value, list) and all(isinstance(x, str) for x in value)


def _value_ok(allowed: tuple[str, ...], value: str, rules: InputRules) -> bool:
    if rules.enum_case == "exact":
        return value in allowed
    folded = value.casefold()
    return any(folded == choice.casefold() for choice in allowed)


def check_input(model: ModelRule, data: Mapping[str, Any], rules: InputRules) -> str | None:
    """Why ``data`` is not a valid ``input`` for ``model`` under ``rules``, or None."""
    name = model.name
    for field in model.fields:
        key = field.name
        if key not in data:
            if field.is_required(rules):
                return f"{name}: input.{key} is required"
            continue
        value = data[key]
        if not _type_ok(field.type, value):
            return f"{name}: input.{key} must be a {field.type}, got {type(value).__name__}"
        empty = not (value.strip() if isinstance(value, str) else value)
        if empty and field.type != "boolean" and field.is_required(rules):
            return f"{name}: input.{key} must not be empty"
        allowed = field.allowed(rules)
        if allowed is not None and not _value_ok(allowed, value, rules):
            return f"{name}: input.{key} must be one of {', '.join(allowed)}; got {value!r}"
        if rules.kie_limits and field.limit is not None and len(value) > field.limit:
            unit = "characters" if field.type == "string" else "items"
            return (
                f"{name}: input.{key} is {len(value)} {unit}, more than the {field.limit} allowed"
            )
    if rules.extra_fields == "reject":
        known = {field.name for field in model.fields}
        for key in data:
            if key not in known:
                return f"{name}: input.{key} is not a parameter of this model"
    return None


def check_create(body: Any, rules: InputRules, accepted: frozenset[str] | None) -> str | None:
    """Why a create request ``body`` gets 422, or None when it is accepted.

    Models outside ``accepted`` are refused (§10: the service answers models it
    lacks with "model does not exist"); documented models have their input
    checked by :func:`check_input`; other accepted models take any input object.
    """
    if not isinstance(body, dict):
        return "the request body must be a JSON object"
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "model is required and must be a non-empty string"
    if accepted is not None and model not in accepted:
        return f"model {model!r} is not supported"
    data = body.get("input")
    if not isinstance(data, dict):
        return "input is required and must be a JSON object"
    callback = body.get("callBackUrl")
    if callback is not None and not (
        isinstance(callback, str) and callback.startswith(("http://", "https://"))
    ):
        return "callBackUrl must be an http(s) URL"
    rule = DOCUMENTED.get(model)
    if rule is None:
        return None
    if callback is None and rule.callback == "marked" and rules.marked_required:
        return f"{model}: callBackUrl is required"
    return check_input(rule, data, rules)
