"""A blocking web view (Flask or Django style) that generates an image with SyncRuxaClient.

One client lives as long as the process and is shared by every request
thread; each view simply calls ``client.generate(...)``. In Flask or Django,
create it once at import time (``ruxa = SyncRuxaClient()``; it starts its
background thread on first use, so gunicorn's ``--preload`` and forking are
fine) and call it from any view::

    @app.post("/images")                       # Flask
    def images():
        info = ruxa.generate("google/nano-banana", {"prompt": request.json["prompt"]}, timeout=60)
        return {"task_id": info.task_id, "urls": list(info.result_urls)}

This file needs no framework: the standard library's ``wsgiref`` serves the
view on threads, against a simulator process. Run ``python examples/sync_view.py``.
"""

from __future__ import annotations

import json
import re
import socketserver
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Callable, Iterable
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from ruxa_async import SyncRuxaClient, TaskFailedError, TaskTimeoutError

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


def make_app(client: SyncRuxaClient) -> Callable[[dict[str, Any], StartResponse], Iterable[bytes]]:
    """A WSGI app with one view: POST /images {"prompt": ...} -> {"task_id", "urls"}."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] != "POST" or environ["PATH_INFO"] != "/images":
            return reply(start_response, "404 Not Found", {"error": "not found"})
        size = int(environ.get("CONTENT_LENGTH") or 0)
        prompt = json.loads(environ["wsgi.input"].read(size))["prompt"]
        try:
            info = client.generate("google/nano-banana", {"prompt": prompt}, timeout=60)
        except TaskFailedError as exc:
            return reply(start_response, "502 Bad Gateway", {"error": exc.fail_msg})
        except TaskTimeoutError:
            return reply(start_response, "202 Accepted", {"error": "still running"})
        body = {"task_id": info.task_id, "urls": list(info.result_urls)}
        return reply(start_response, "200 OK", body)

    return app


def reply(start_response: StartResponse, status: str, body: dict[str, Any]) -> list[bytes]:
    """A JSON response."""
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json")])
    return [data]


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    """wsgiref's server, one thread per request (as gunicorn's gthread workers do)."""

    daemon_threads = True


class QuietHandler(WSGIRequestHandler):
    """No access log on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


def start_simulator(key: str) -> tuple[subprocess.Popen[str], str]:
    """``python -m ruxa_async.testing`` on a free port; its process and URL."""
    argv = [sys.executable, "-m", "ruxa_async.testing", "--port", "0", "--api-key", key]
    sim = subprocess.Popen([*argv, "--median-seconds", "0.5"], stdout=subprocess.PIPE, text=True)
    assert sim.stdout is not None
    match = re.search(r"at (http://\S+)", sim.stdout.readline())
    if match is None:
        sim.kill()
        raise SystemExit("the simulator did not start")
    return sim, match.group(1)


def post(url: str, prompt: str, out: dict[str, str]) -> None:
    """One client request to the view (run on its own thread)."""
    request = urllib.request.Request(
        url, data=json.dumps({"prompt": prompt}).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=90) as response:
        out[prompt] = f"HTTP {response.status} {response.read().decode()}"


def main() -> None:
    sim, sim_url = start_simulator("sk-demo")
    try:
        with SyncRuxaClient("sk-demo", base_url=sim_url) as client:
            server = make_server(
                "127.0.0.1",
                0,
                make_app(client),
                server_class=ThreadingWSGIServer,
                handler_class=QuietHandler,
            )
            threading.Thread(target=server.serve_forever, daemon=True).start()
            url = f"http://127.0.0.1:{server.server_port}/images"
            replies: dict[str, str] = {}
            prompts = ["a red fox", "a blue whale", "a green parrot", "a grey heron"]
            threads = [threading.Thread(target=post, args=(url, p, replies)) for p in prompts]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            server.shutdown()
            server.server_close()
            for prompt in prompts:
                print(f"{prompt!r}: {replies[prompt]}")
            stats = client.statistics()
            print(
                f"{len(prompts)} views shared one client: {stats.creates} creates, "
                f"{stats.queries} queries"
            )
    finally:
        sim.terminate()
        sim.wait(10)
        if sim.stdout is not None:
            sim.stdout.close()


if __name__ == "__main__":
    main()
