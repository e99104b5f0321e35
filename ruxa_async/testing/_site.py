"""The simulator's socket: bind it, name its URL, and close and re-bind it for an outage."""

from __future__ import annotations

import asyncio

from aiohttp import web

__all__ = ["Site"]


class Site:
    """One aiohttp application served on ``host:port`` (port 0: any free one)."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self.url = ""
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`aclose`."""
        return self._runner is not None

    async def start(self, app: web.Application) -> None:
        """Bind the socket and serve ``app``; :attr:`url` is its base URL from now on."""
        if self._runner is not None:
            raise RuntimeError("the simulator is already running")
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.25)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self._host, self._port, backlog=1024)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._site = site
        port = runner.addresses[0][1]
        self._port = port
        host = self._host
        if host in ("", "0.0.0.0"):
            host = "127.0.0.1"
        elif host == "::":
            host = "::1"
        self.url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    async def aclose(self) -> None:
        """Stop serving."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def unlisten(self) -> None:
        """Close the listening socket and cut every open connection."""
        site, self._site = self._site, None
        if site is not None:
            await site.stop()
        server = self._runner.server if self._runner is not None else None
        for handler in server.connections if server is not None else ():
            transport = handler.transport
            if transport is not None:
                transport.close()

    async def listen(self) -> None:
        """Bind the socket again on the same port."""
        assert self._runner is not None
        for attempt in range(50):  # the port may be briefly taken (an outgoing socket)
            site = web.TCPSite(self._runner, self._host, self._port, backlog=1024)
            try:
                await site.start()
            except OSError:
                if attempt == 49:
                    raise
                await asyncio.sleep(0.02)
            else:
                self._site = site
                return
