"""Child processes of the harness: the simulator and the client under test.

Every child is started here, pinned to its CPU where the OS allows, asked to
die with the harness (``PR_SET_PDEATHSIG`` on Linux), and stopped by its own
pid when its ``with`` block ends, whatever happened inside.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

ROOT = Path(__file__).resolve().parent.parent
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


def child_env() -> dict[str, str]:
    """The environment for children: no proxy settings (loopback only), the repo importable."""
    env = {k: v for k, v in os.environ.items() if k.lower() not in _PROXY_VARS}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def pin(pid: int, cpu: int | None) -> None:
    """Pin ``pid`` to ``cpu`` when the OS allows it."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(pid, {cpu})


def cpu_seconds(pid: int, *, kernel_only: bool = False) -> float:
    """User + system CPU seconds of ``pid`` so far (0.0 when unreadable); system alone with
    ``kernel_only``."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[12]) if kernel_only else int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def read_line(stream: IO[bytes], timeout: float) -> str:
    """One line from a child's stdout, or TimeoutError."""
    ready, _, _ = select.select([stream], [], [], timeout)
    if not ready:
        raise TimeoutError("the child printed nothing in time")
    return stream.readline().decode("utf-8", "replace").strip()


_C = TypeVar("_C", bound="Child")


class Child:
    """A child process owned by one ``with`` block."""

    def __init__(self, argv: list[str], log: Path, cpu: int | None, stdin: bool = False) -> None:
        self.argv = argv
        self.log = log
        self.cpu = cpu
        self.want_stdin = stdin
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None

    def __enter__(self: _C) -> _C:
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            self.argv,
            stdin=subprocess.PIPE if self.want_stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            cwd=ROOT,
            env=child_env(),
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        pin(self.proc.pid, self.cpu)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self, grace: float = 5.0) -> None:
        """SIGTERM (SIGKILL when ``grace`` is 0, or after ``grace`` s); closes pipes and log."""
        proc = self.proc
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    if grace > 0:
                        proc.terminate()
                    else:
                        proc.kill()
                try:
                    proc.wait(grace or None)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def line(self, timeout: float) -> str:
        """The next line the child prints."""
        assert self.proc is not None
        assert self.proc.stdout is not None
        return read_line(self.proc.stdout, timeout)

    def send(self, text: str) -> None:
        """Write one line to the child's stdin."""
        assert self.proc is not None
        assert self.proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            self.proc.stdin.write(text.encode() + b"\n")
            self.proc.stdin.flush()

    def poll(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def log_tail(self, lines: int = 20) -> str:
        """The end of the child's stderr log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text("utf-8", "replace").splitlines()[-lines:])
        return ""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


class Simulator(Child):
    """``python -m ruxa_async.testing`` on a given loopback port, with a JSON config.

    Its URL and API key are known before it starts, so the client process can
    start at the same time (it waits until the port accepts connections).
    """

    API_KEY = "sk-benchmark"

    def __init__(self, config: dict[str, Any], work: Path, cpu: int | None, name: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = self.API_KEY
        path = work / f"{name}.sim.json"
        path.write_text(json.dumps({**config, "api_key": self.api_key}), encoding="utf-8")
        argv = [sys.executable, "-m", "ruxa_async.testing", "--host", "127.0.0.1"]
        argv += ["--port", str(self.port), "--config-json", str(path)]
        super().__init__(argv, work / f"{name}.sim.log", cpu)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Block until the simulator prints its banner ("Ruxa simulator at URL ...")."""
        try:
            banner = self.line(timeout)
        except TimeoutError:
            raise RuntimeError(f"the simulator did not start:\n{self.log_tail()}") from None
        if self.url not in banner:
            raise RuntimeError(f"unexpected simulator banner {banner!r}\n{self.log_tail()}")

    def kill(self) -> None:
        """Stop at once (its records were read already; nothing to shut down cleanly)."""
        self.stop(grace=0.0)

    def admin(self, path: str, patch: dict[str, Any] | None = None) -> Any:
        """GET (or POST ``patch`` to) an admin endpoint; the decoded JSON reply."""
        data = None if patch is None else json.dumps(patch).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method="GET" if data is None else "POST"
        )
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with _OPENER.open(request, timeout=60) as reply:
            return json.loads(reply.read())


class ClientProcess(Child):
    """``python -m benchmarks._client SPEC OUT`` for one contender."""

    def __init__(self, spec: dict[str, Any], work: Path, name: str) -> None:
        self.spec_path = work / f"{name}.spec.json"
        self.out_path = work / f"{name}.out.json"
        self.spec_path.write_text(json.dumps(spec), encoding="utf-8")
        with contextlib.suppress(FileNotFoundError):
            self.out_path.unlink()
        argv = [sys.executable, "-m", "benchmarks._client", str(self.spec_path), str(self.out_path)]
        super().__init__(argv, work / f"{name}.client.log", spec.get("cpu"), stdin=True)
        self.started_at = 0.0

    def wait_started(self, timeout: float = 120.0) -> float:
        """Block until the client prints ``START <t>``; return ``t`` (its monotonic clock)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or self.poll() is not None:
                raise RuntimeError(f"the client did not start:\n{self.log_tail()}")
            with contextlib.suppress(TimeoutError):
                line = self.line(min(left, 1.0))
                if line.startswith("START "):
                    self.started_at = float(line.split()[1])
                    return self.started_at

    def result(self) -> dict[str, Any]:
        """The client's raw figures (after it exited)."""
        if not self.out_path.exists():
            raise RuntimeError(f"the client wrote no results:\n{self.log_tail()}")
        data: dict[str, Any] = json.loads(self.out_path.read_text(encoding="utf-8"))
        return data
