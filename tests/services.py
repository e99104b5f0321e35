"""Real services for the tests: a ``redis-server`` and a headless ``chromium`` from Debian.

A fresh machine may have neither. When one is missing and this process may install Debian
packages (root with ``apt-get``), it is installed once; otherwise the test fails with a message
that says what to install. Nothing is mocked and nothing is skipped.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
# The flags a closed network needs: without them Chromium keeps dialling Google's hosts.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def ensure_debian_package(binary: str, package: str) -> str:
    """The path of ``binary``, installing Debian's ``package`` first when it is missing."""
    found = shutil.which(binary)
    if found:
        return found
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        raise RuntimeError(
            f"{binary!r} is not installed and cannot be installed from here: "
            f"run `apt-get install -y {package}` as root, then run the tests again"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([apt, "update", "-qq"], check=False, env=env, capture_output=True)
    done = subprocess.run(
        [apt, "install", "-y", "-qq", package], check=False, env=env, capture_output=True, text=True
    )
    found = shutil.which(binary)
    if not found:
        raise RuntimeError(f"`apt-get install {package}` failed: {done.stderr[-2000:]}")
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """A private ``redis-server`` on a free loopback port, without persistence."""

    def __init__(self, port: int | None = None) -> None:
        self.binary = ensure_debian_package("redis-server", "redis-server")
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="ruxa-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start the server and wait until it answers PING."""
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no", "--dir", str(self.dir)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at once (port {self.port} taken?)")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError("redis-server did not answer PING within 15 s")

    def stop(self) -> None:
        """Kill the server (SIGKILL: an outage, not a shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def restart(self) -> None:
        """Stop, then start again on the same port (its data is gone, as after a crash)."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its directory."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    """A started :class:`RedisServer`, closed on exit."""
    server = RedisServer()
    try:
        server.start()
        yield server
    finally:
        server.close()


def chromium_path() -> str:
    """Debian's Chromium, installed when missing (Playwright cannot download browsers here)."""
    ensure_debian_package("chromium", "chromium")
    return CHROMIUM
