"""SyncRuxaClient lifecycles in real processes: exit without close(), and fork()."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from tests.helpers_proc import ROOT, SimProcess, child_env

SLOW = "google/nano-banana-pro"
NOISE = ("Event loop is closed", "Exception ignored", "Traceback", "Unclosed", "unclosed")

PRELUDE = """
import os, sys, threading
from ruxa_async import PollPolicy, SyncRuxaClient
POLL = PollPolicy(first_check=0.05, min_interval=0.05, max_interval=0.3)
URL, KEY = sys.argv[1], sys.argv[2]
NB, SLOW = "google/nano-banana", "google/nano-banana-pro"
"""

NEVER_CLOSED = """
client = SyncRuxaClient(KEY, base_url=URL, poll=POLL)
info = client.generate(NB, {"prompt": "exit test"}, timeout=30)
pending = client.submit(SLOW, {"prompt": "still running at exit"})
print("done", info.state.value, client.statistics().pending)
"""

BATCH_LEFT_OPEN = (
    NEVER_CLOSED
    + """
from ruxa_async import Job
batch = client.as_completed(Job(model=NB, input={"prompt": f"b{i}"}) for i in range(1000))
print("first", next(batch).status.value)   # a batch left open, mid-way
"""
)

FORK = """
client = SyncRuxaClient(KEY, base_url=URL, poll=POLL)
unused = SyncRuxaClient(KEY, base_url=URL, poll=POLL)   # never started before the fork
print("parent", client.generate(NB, {"prompt": "before fork"}, timeout=30).state.value)
pending = client.submit(SLOW, {"prompt": "parent pending across the fork"})
pid = os.fork()
if pid == 0:
    a = client.generate(NB, {"prompt": "in child"}, timeout=30).state.value
    b = unused.generate(NB, {"prompt": "in child, other client"}, timeout=30).state.value
    engines = sum(1 for t in threading.enumerate() if t.name == "ruxa_async engine")
    print("child", a, b, engines, flush=True)
    client.close()
    unused.close()
    sys.exit(0)          # a normal exit: the interpreter finalizes everything it inherited
_, status = os.waitpid(pid, 0)
print("child exit", os.waitstatus_to_exitcode(status))
print("parent again", client.generate(NB, {"prompt": "after fork"}, timeout=30).state.value)
print("parent pending", client.statistics().pending)
client.close()
unused.close()
"""


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimProcess]:
    """A standalone simulator whose SLOW model never finishes within a test."""
    proc = SimProcess(
        tmp_path_factory.mktemp("sim"),
        key="sk-life",
        default_behavior={"median_seconds": 0.05, "sigma": 0.2},
        models={SLOW: {"median_seconds": 600.0, "sigma": 0.0}},
    )
    try:
        yield proc
    finally:
        proc.close()


def run_script(body: str, sim: SimProcess, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run PRELUDE + ``body`` in a fresh interpreter with this checkout importable."""
    code = textwrap.dedent(PRELUDE) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, *flags, "-c", code, sim.url, sim.key],
        capture_output=True,
        text=True,
        env=child_env(),
        cwd=ROOT,
        timeout=50,
        check=False,
    )


def test_exit_without_close_is_silent(sim: SimProcess) -> None:
    """A script that never calls close() exits 0 at once, with nothing on stderr."""
    done = run_script(NEVER_CLOSED, sim)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["done", "success", "1"]
    assert done.stderr == ""


def test_exit_without_close_warns_resource_warning(sim: SimProcess) -> None:
    """With a batch left open too: the forgotten client is reported once, and no loop errors."""
    done = run_script(BATCH_LEFT_OPEN, sim, "-W", "always::ResourceWarning")
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["done", "success", "1", "first", "succeeded"]
    assert done.stderr.count("ResourceWarning: a SyncRuxaClient was never closed") == 1
    for noise in NOISE:
        assert noise not in done.stderr


def test_fork_child_gets_its_own_engine(sim: SimProcess) -> None:
    """After fork() a child's inherited clients start their own engine; the parent's still works."""
    done = run_script(FORK, sim, "-W", "always::ResourceWarning")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "parent success"
    assert "child success success 2" in lines
    assert "child exit 0" in lines
    assert "parent again success" in lines
    assert "parent pending 1" in lines
    for noise in NOISE:
        assert noise not in done.stderr
    assert done.stderr == ""
