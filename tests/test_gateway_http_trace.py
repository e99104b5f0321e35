"""RUXA_GATEWAY_TRACE: the standalone gateway stamps each request's phases for diagnosis."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

from ruxa_async import RuxaClient
from ruxa_async.gateway import hash_token
from tests.helpers_gateway import NB, PROMPT, TOKENS
from tests.helpers_proc import ROOT, child_env, cli, reaped

PHASES = ("read", "parsed", "start", "up_written", "up_read", "up_resumed", "end", "written")
PHASES += ("up_writing", "writing")
IN_ORDER = ("read", "parsed", "start", "up_writing", "up_written", "up_read", "up_resumed")
IN_ORDER += ("end", "writing", "written")


async def test_a_traced_gateway_writes_every_phase_of_its_requests_in_order(
    tmp_path: Path,
) -> None:
    """With RUXA_GATEWAY_TRACE set, stopping the gateway writes one line per request (its
    phases in order), one per commit, the objects frozen at start-up, and no token or key."""
    config, trace = tmp_path / "gateway.toml", tmp_path / "trace.jsonl"
    config.write_text(
        'signing_secret = "trace-test-secret-0123456789"\n'
        f'[users.alice]\ntoken_sha256 = "{hash_token(TOKENS["alice"])}"\n',
        encoding="utf-8",
    )
    proc = subprocess.Popen(  # noqa: ASYNC220 - started once; its output is read off the loop
        cli("gateway", "--simulate", "--config", str(config), "--port", "0"),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
        env=child_env(RUXA_GATEWAY_TRACE=str(trace)),
        cwd=ROOT,
    )
    with reaped(proc):
        assert proc.stderr is not None
        first = await asyncio.to_thread(proc.stderr.readline)
        assert first.startswith("ruxa-async gateway on "), first
        async with RuxaClient(api_key=TOKENS["alice"], base_url=first.split()[-1]) as alice:
            task_id = await alice.create_task(NB, PROMPT)
            await alice.get_task(task_id)
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 30) == 0
    text = trace.read_text(encoding="utf-8")
    lines = [json.loads(line) for line in text.splitlines()]
    requests = {
        line["kind"]: dict(zip(PHASES, line["t"], strict=True)) for line in lines if "t" in line
    }
    assert set(requests) == {"create", "query"}
    for kind, stamps in requests.items():
        assert [stamps[p] for p in IN_ORDER] == sorted(stamps[p] for p in IN_ORDER), kind
    assert any("commit" in line for line in lines)
    assert lines[0]["frozen"] > 1000  # what start-up made is frozen: the GC walks it no more
    assert TOKENS["alice"] not in text
    assert "Bearer" not in text
