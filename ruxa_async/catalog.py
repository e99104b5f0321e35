"""The documented Ruxa models: their input fields, allowed values, uses and cost guidance.

Ruxa publishes no prices; :data:`DEFAULT_PRICES` are community-reported credit
costs meant for estimates only. Override them with ``prices=`` wherever an
estimate is made. Unknown models pass through untouched: the service, not this
catalogue, is the final judge. Where Ruxa's documentation is unsure, the checks
let every reading through: allowed values match whatever their case (``1k`` and
``1K``), and kie.ai's limits (5000-character prompts, 10 or 8 images) and
nano-banana-edit's unreadable ``image_size`` list are left to the service.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import attrs

from ._errors import InvalidInputError

__all__ = [
    "DEFAULT_PRICES",
    "MODELS",
    "FieldSpec",
    "ModelSpec",
    "estimate_cost",
    "get_model",
    "validate_input",
]

_ASPECTS = ("1:1", "9:16", "16:9", "3:4", "4:3", "3:2", "2:3", "5:4", "4:5", "21:9", "auto")


@attrs.frozen(kw_only=True)
class FieldSpec:
    """One input field of a model: its JSON type, whether required, its allowed values."""

    name: str
    type: str  # "string", "boolean", "string[]"
    required: bool = False
    choices: tuple[str, ...] | None = None
    max_length: int | None = None
    max_items: int | None = None
    description: str = ""


@attrs.frozen(kw_only=True)
class ModelSpec:
    """A documented model: what it is for, its input fields and its typical duration."""

    name: str
    kind: str  # "image" or "video"
    use: str
    fields: tuple[FieldSpec, ...]
    typical_seconds: float
    callback_required: bool = False

    def field(self, name: str) -> FieldSpec | None:
        """The spec of input field ``name``, or None if the model does not document it."""
        for spec in self.fields:
            if spec.name == name:
                return spec
        return None


def _prompt(description: str = "what to generate") -> FieldSpec:
    return FieldSpec(name="prompt", type="string", required=True, description=description)


_SORA_COMMON = (
    FieldSpec(name="input_reference", type="string", description="reference image URL"),
    FieldSpec(name="watermark", type="boolean"),
    FieldSpec(name="private", type="boolean"),
    FieldSpec(name="character_url", type="string"),
    FieldSpec(name="character_timestamps", type="string", description='"start,end" in seconds'),
    FieldSpec(name="metadata", type="string"),
    FieldSpec(name="character_from_task", type="string"),
    FieldSpec(name="character_create", type="boolean"),
    FieldSpec(name="style", type="string", choices=("winter", "comic", "news")),
)

MODELS: Mapping[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            name="google/nano-banana",
            kind="image",
            use="quick prototyping: fast standard text-to-image",
            typical_seconds=10.0,
            fields=(
                _prompt(),
                FieldSpec(name="output_format", type="string", choices=("png", "jpeg")),
                FieldSpec(name="image_size", type="string", choices=_ASPECTS),
            ),
        ),
        ModelSpec(
            name="google/nano-banana-edit",
            kind="image",
            use="editing existing images with an instruction",
            typical_seconds=12.0,
            fields=(
                _prompt("the editing instruction"),
                FieldSpec(name="image_urls", type="string[]", required=True),
                FieldSpec(name="output_format", type="string", choices=("png", "jpeg")),
                FieldSpec(name="image_size", type="string", description="aspect ratio"),
            ),
        ),
        ModelSpec(
            name="google/nano-banana-pro",
            kind="image",
            use="high quality images up to 4k, with reference images",
            typical_seconds=45.0,
            callback_required=True,
            fields=(
                _prompt(),
                FieldSpec(name="image_input", type="string[]"),
                FieldSpec(name="aspect_ratio", type="string", choices=_ASPECTS),
                FieldSpec(name="resolution", type="string", choices=("1k", "2k", "4k")),
                FieldSpec(name="output_format", type="string", choices=("png", "jpg")),
            ),
        ),
        ModelSpec(
            name="sora-2",
            kind="video",
            use="SD video (720p), 10 or 15 seconds",
            typical_seconds=120.0,
            fields=(
                _prompt("the video description"),
                FieldSpec(name="seconds", type="string", choices=("10", "15")),
                FieldSpec(name="size", type="string", choices=("720x1280", "1280x720")),
                *_SORA_COMMON,
            ),
        ),
        ModelSpec(
            name="sora-2-hd",
            kind="video",
            use="HD video, up to 25 seconds",
            typical_seconds=240.0,
            fields=(
                _prompt("the video description"),
                FieldSpec(name="seconds", type="string", choices=("10", "15", "25")),
                FieldSpec(
                    name="size",
                    type="string",
                    choices=("720x1280", "1280x720", "1024x1792", "1792x1024"),
                ),
                *_SORA_COMMON,
            ),
        ),
    )
}

DEFAULT_PRICES: Mapping[str, float] = {
    "google/nano-banana": 4.0,
    "google/nano-banana-edit": 4.0,
    "google/nano-banana-pro": 18.0,
    "sora-2": 10.0,
    "sora-2-hd": 30.0,
}


def get_model(name: str) -> ModelSpec | None:
    """The catalogue entry for ``name``, or None for a model the catalogue does not know."""
    return MODELS.get(name)


def _type_ok(spec: FieldSpec, value: Any) -> bool:
    if spec.type == "string":
        return isinstance(value, str)
    if spec.type == "boolean":
        return isinstance(value, bool)
    if spec.type == "string[]":
        return isinstance(value, (list, tuple)) and all(isinstance(x, str) for x in value)
    return True


@functools.lru_cache(maxsize=64)
def _folded(choices: tuple[str, ...]) -> frozenset[str]:
    return frozenset(choice.casefold() for choice in choices)


def validate_input(model: str, input: Mapping[str, Any]) -> None:
    """Check ``input`` against the catalogue's rules for ``model``.

    Raises :class:`InvalidInputError` naming the field at fault.

    Unknown models and undocumented extra fields pass: the catalogue only
    rejects what every reading of the documentation rules out (a missing or
    empty required field, a value of the wrong type, a value outside the
    allowed list in any letter case).
    """
    if not isinstance(model, str) or not model:
        raise InvalidInputError("model must be a non-empty string", model=str(model), field="model")
    if type(input) is not dict and not isinstance(input, Mapping):
        raise InvalidInputError("input must be a JSON object", model=model, field="input")
    spec = MODELS.get(model)
    if spec is None:
        return
    for field in spec.fields:
        if field.name not in input:
            if field.required:
                raise InvalidInputError(
                    f"{model}: input.{field.name} is required", model=model, field=field.name
                )
            continue
        value = input[field.name]
        if not _type_ok(field, value):
            raise InvalidInputError(
                f"{model}: input.{field.name} must be a {field.type}, got {type(value).__name__}",
                model=model,
                field=field.name,
            )
        empty = not (value.strip() if isinstance(value, str) else value)
        if field.required and empty and field.type != "boolean":
            raise InvalidInputError(
                f"{model}: input.{field.name} must not be empty", model=model, field=field.name
            )
        if field.choices is not None and value.casefold() not in _folded(field.choices):
            allowed = ", ".join(field.choices)
            raise InvalidInputError(
                f"{model}: input.{field.name} must be one of {allowed}; got {value!r}",
                model=model,
                field=field.name,
            )
        if field.max_length is not None and len(value) > field.max_length:
            raise InvalidInputError(
                f"{model}: input.{field.name} is {len(value)} characters, "
                f"more than the {field.max_length} allowed",
                model=model,
                field=field.name,
            )
        if field.max_items is not None and len(value) > field.max_items:
            raise InvalidInputError(
                f"{model}: input.{field.name} has {len(value)} items, "
                f"more than the {field.max_items} allowed",
                model=model,
                field=field.name,
            )


def estimate_cost(
    model: str, input: Mapping[str, Any] | None = None, prices: Mapping[str, float] | None = None
) -> float | None:
    """Estimated credits for one task of ``model``, or None when no price is known.

    ``prices`` overrides :data:`DEFAULT_PRICES` model by model.
    """
    if prices is not None and model in prices:  # as {**DEFAULT_PRICES, **prices}.get(model)
        return prices[model]
    return DEFAULT_PRICES.get(model)
