"""``index.html``: a self-contained contact sheet of a run's results.

One tile per job: the image (or a link to the video), the job id, prompt,
model, status and estimated cost, or the failure's message. Links are
relative to the output folder; there is no external asset, no script, and
every text is escaped. The page is written as the results are, tile by tile,
and stops adding tiles after ``limit`` (it then says how many more
``results.jsonl`` holds).
"""

from __future__ import annotations

import html
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import quote

from .catalog import estimate_cost

__all__ = ["Gallery"]

LIMIT = 5000
_IMAGES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".avif")
_VIDEOS = (".mp4", ".webm", ".mov", ".m4v")
_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .3em; }
.sheet { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 12px; }
.tile { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 8px;
        overflow-wrap: anywhere; }
.tile img { width: 100%; height: 200px; object-fit: contain; background: #eee; display: block; }
.tile .video, .tile .none { display: flex; align-items: center; justify-content: center;
        height: 200px; background: #222; color: #fff; text-decoration: none; }
.tile .none { background: #eee; color: #777; }
.key { font-weight: 600; } .prompt { color: #444; } .meta { color: #777; font-size: 12px; }
.status-succeeded .meta b { color: #17803d; } .error { color: #b42318; }
.tile:not(.status-succeeded) .meta b { color: #b42318; }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _href(name: str) -> str:
    return _e(quote(name))


class Gallery:
    """Writes ``index.html`` in ``out`` tile by tile; a context manager (renames it into place)."""

    def __init__(self, out: Path, title: str, *, limit: int = LIMIT) -> None:
        self._final = out / "index.html"
        self._part = out / ".index.html.part"
        self._title = title
        self._limit = limit
        self._shown = 0
        self._left = 0
        self._handle: IO[str] | None = None

    def __enter__(self) -> Gallery:
        self._handle = self._part.open("w", encoding="utf-8")
        self._handle.write(
            "<!doctype html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>{_e(self._title)}</title>"
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<style>{_STYLE}</style></head><body>\n<h1>{_e(self._title)}</h1>\n"
            '<div class="sheet">\n'
        )
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        handle, self._handle = self._handle, None
        if handle is None:
            return
        handle.write("</div>\n")
        if self._left:
            handle.write(f"<p>... and {self._left} more jobs: see results.jsonl</p>\n")
        handle.write("</body></html>\n")
        handle.close()
        if exc_type is None:
            os.replace(self._part, self._final)
        else:
            self._part.unlink(missing_ok=True)

    def add(self, entry: Mapping[str, Any], job_input: Mapping[str, Any]) -> None:
        """Add the tile of one ``results.jsonl`` entry (``job_input``: what the job asked)."""
        assert self._handle is not None
        if self._shown >= self._limit:
            self._left += 1
            return
        self._shown += 1
        self._handle.write(tile(entry, job_input))


def tile(entry: Mapping[str, Any], job_input: Mapping[str, Any]) -> str:
    """The HTML of one job's tile."""
    status = str(entry.get("status", ""))
    files: list[str] = list(entry.get("files") or [])
    media = _media(files)
    prompt = job_input.get("prompt")
    cost = estimate_cost(str(entry.get("model", "")), job_input)
    parts = [f'<figure class="tile status-{_e(status)}">', media, "<figcaption>"]
    parts.append(f'<div class="key">{_e(entry.get("key", ""))}</div>')
    if isinstance(prompt, str) and prompt:
        shown = prompt if len(prompt) <= 300 else prompt[:300] + "..."
        parts.append(f'<div class="prompt">{_e(shown)}</div>')
    cost_text = f"~{cost:g} credits" if cost is not None else "price unknown"
    parts.append(
        f'<div class="meta">{_e(entry.get("model", ""))} · <b>{_e(status.replace("_", " "))}</b>'
        f" · {_e(cost_text)}</div>"
    )
    for name in files[1:] if media.startswith("<img") else files:
        parts.append(f'<div class="meta"><a href="{_href(name)}">{_e(name)}</a></div>')
    if entry.get("error"):
        parts.append(f'<div class="error">{_e(entry["error"])}</div>')
    parts.append("</figcaption></figure>\n")
    return "".join(parts)


def _media(files: list[str]) -> str:
    for name in files:
        if name.lower().endswith(_IMAGES):
            return f'<a href="{_href(name)}"><img src="{_href(name)}" alt="{_e(name)}"></a>'
    for name in files:
        if name.lower().endswith(_VIDEOS):
            return f'<a class="video" href="{_href(name)}">&#9654; video</a>'
    return '<div class="none">no image</div>'
