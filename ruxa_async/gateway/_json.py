"""The gateway's JSON helpers: built-once encoders and a quicker ``loads`` (``.._jsoncodec``)."""

from __future__ import annotations

from .._jsoncodec import json_encoder, json_loads

__all__ = ["json_encoder", "json_loads"]
