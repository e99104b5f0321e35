"""The little of Ruxa's wire the baselines need, written the way a user would."""

from __future__ import annotations

from typing import Any

import aiohttp

CREATE_PATH = "/api/v1/tasks/create"
QUERY_PATH = "/api/v1/tasks/query/"
TERMINAL = frozenset({"success", "fail"})


class RateLimited(Exception):
    """HTTP 429, with the server's Retry-After in seconds when it sent one."""

    def __init__(self, retry_after: float | None) -> None:
        super().__init__(f"429 Too Many Requests (Retry-After {retry_after})")
        self.retry_after = retry_after


class ServerError(Exception):
    """HTTP 5xx."""


class RequestFailed(Exception):
    """Any other non-2xx reply: not worth retrying."""


def headers(api_key: str) -> dict[str, str]:
    """The request headers every baseline sends."""
    return {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}


def create_body(model: str, prompt_input: dict[str, Any]) -> dict[str, Any]:
    """A create request body."""
    return {"model": model, "input": prompt_input}


def retry_after(resp: aiohttp.ClientResponse) -> float | None:
    """The Retry-After header in seconds, or None."""
    value = resp.headers.get("Retry-After")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


async def checked_json(resp: aiohttp.ClientResponse) -> dict[str, Any]:
    """The reply's JSON envelope, or the exception its status calls for."""
    if resp.status == 429:
        raise RateLimited(retry_after(resp))
    if resp.status >= 500:
        raise ServerError(f"HTTP {resp.status}")
    if resp.status >= 400:
        raise RequestFailed(f"HTTP {resp.status}")
    data: dict[str, Any] = await resp.json()
    return data
