"""The gateway served alone: its own small HTTP/1.1 server, or aiohttp's without httptools.

Request bodies are bounded in size (413) and in time (408), and so are request
headers (``header_timeout``): a slow client costs one connection for a bounded
time and nothing else. The routes are :class:`~._endpoints.Router`'s.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ._endpoints import Router

if TYPE_CHECKING:
    from ._view import GatewayView

__all__ = ["serve_gateway"]

log = logging.getLogger("ruxa_async")

Closer = Callable[[], Awaitable[None]]


async def serve_gateway(gw: GatewayView, host: str, port: int) -> tuple[Closer, str]:
    """Serve ``gw`` alone on ``host:port``; return a coroutine function that stops it, and
    the base URL.

    Each connection must finish sending a request's headers within
    ``header_timeout`` seconds of its first byte (or of connecting), else it
    gets a 408 and is closed.
    """
    config = gw.config
    try:
        from ._httpserver import start_server
    except ImportError:  # no httptools: aiohttp's server
        from ._aiohttp_front import serve_with_aiohttp

        log.info('gateway: serving with aiohttp (pip install "ruxa-async[gateway]" is faster)')
        closer, bound = await serve_with_aiohttp(Router(gw), config, host, port)
    else:
        server = await start_server(
            Router(gw),
            host,
            port,
            max_body=config.max_body,
            body_timeout=config.body_timeout,
            header_timeout=config.header_timeout,
        )
        closer, bound = server.aclose, server.port
    shown = "127.0.0.1" if host in ("", "0.0.0.0") else host
    url = f"http://[{shown}]:{bound}" if ":" in shown else f"http://{shown}:{bound}"
    return closer, url
