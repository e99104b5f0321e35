"""The gateway's HTTP server answers a keep-alive connection with one task, which ends with it.

The task waits for the connection's next request between requests (cheaper than a task per
request); these tests hold it to ending whenever the connection does, so that neither closing
the server nor an idle timeout leaves a task behind.
"""

from __future__ import annotations

import asyncio

from ruxa_async.gateway._httpserver import HttpServer, start_server
from tests.test_gateway_server import App, connection, get, response, serving


def answering_tasks(server: HttpServer) -> list[asyncio.Task[None]]:
    """The answering task of each open connection (made at its first request)."""
    return [c._task for c in server._connections if c._task is not None]


async def test_one_task_answers_every_request_of_a_connection_and_ends_with_it() -> None:
    app = App()
    async with serving(app) as server:
        async with connection(server.port) as (reader, writer):
            seen = set()
            for n in range(3):
                writer.write(get(f"/n{n}"))
                assert (await response(reader))[2] == f"GET /n{n} 0".encode()
                seen.update(answering_tasks(server))
                assert not server.tasks  # idle: closing the server would not wait for it
            assert len(seen) == 1
            task = seen.pop()
            assert not task.done()  # waiting for the next request
        await asyncio.wait_for(task, 10)  # the client left: the task ended
    assert task.exception() is None


async def test_closing_the_server_ends_the_tasks_of_idle_connections() -> None:
    app = App()
    server = await start_server(
        app, "127.0.0.1", 0, max_body=1000, body_timeout=5, header_timeout=5
    )
    async with connection(server.port) as (reader, writer):
        writer.write(get("/a"))
        await response(reader)
        (task,) = answering_tasks(server)
        await asyncio.wait_for(server.aclose(grace=30.0), 10)  # no grace waited for idle ones
        await asyncio.wait_for(task, 10)
        assert await reader.read() == b""
    assert not task.cancelled()


async def test_an_idle_timeout_ends_the_task_and_a_new_connection_gets_its_own() -> None:
    app = App()
    async with serving(app, keepalive_timeout=0.05) as server:
        async with connection(server.port) as (reader, writer):
            writer.write(get("/a"))
            await response(reader)
            (first,) = answering_tasks(server)
            assert await reader.read() == b""  # closed by the server when idle
            await asyncio.wait_for(first, 10)
        async with connection(server.port) as (reader, writer):
            writer.write(get("/b"))
            assert (await response(reader))[2] == b"GET /b 0"
            assert answering_tasks(server) != [first]


async def test_a_failing_handler_closes_its_connection_and_ends_the_task() -> None:
    app = App()
    async with serving(app) as server, connection(server.port) as (reader, writer):
        writer.write(get("/a"))
        await response(reader)
        (task,) = answering_tasks(server)
        writer.write(get("/boom"))
        assert (await response(reader))[0] == 500
        assert await reader.read() == b""
        await asyncio.wait_for(task, 10)
