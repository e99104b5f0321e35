"""The engine of ``ruxa-async run``: plan from the jobs file and the journal, run, download, report.

Every job is journaled before its create request is sent, result files are
downloaded as each task succeeds, and ``results.jsonl`` gets one line per job.
Running the same command again resumes without paying twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio.to_thread
import attrs

from . import (
    DEFAULT_BASE_URL,
    APIConnectionError,
    AuthenticationError,
    DownloadError,
    InsufficientCreditsError,
    Job,
    JobOutcome,
    MalformedResponseError,
    NotSubmittedError,
    OutcomeStatus,
    PollPolicy,
    ProgressEvent,
    RateLimits,
    RuxaClient,
    ServerError,
    ServiceUnavailableError,
    TaskInfo,
    TaskTimeoutError,
)
from ._download import file_name
from ._jobsfile import JobLine, JobsFileError, JobsSummary, read_jobs, scan_jobs
from ._journal import FileRecord, JobRecord, JobRef, JobState, Journal, JournalError
from ._progress import BatchCounters, Display, make_display, print_summary
from .catalog import estimate_cost

if TYPE_CHECKING:
    from .testing import SimConfig
    from .webhooks import CallbackServer

__all__ = [
    "EXIT_FATAL",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_USAGE",
    "PROG",
    "BatchRun",
    "CLIError",
    "Secrets",
    "api_key",
    "base_url",
    "callback_address",
    "check_jobs_file",
    "demo_sim_config",
    "poll_policy",
    "prepare_out",
    "say",
]

log = logging.getLogger("ruxa_async")

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_USAGE = 2
EXIT_FATAL = 3
EXIT_INTERRUPTED = 130

PROG = "ruxa-async"
_MAX_PROBLEMS = 10
_READ_BATCH = 256
_AMBIGUOUS_TEXT = (
    "a create request may have reached Ruxa but no task id was recorded; not sent again "
    "to avoid paying twice (run with --resubmit-ambiguous to send it again)"
)
_SIM_MEDIANS = {
    "google/nano-banana": 1.0,
    "google/nano-banana-edit": 1.0,
    "google/nano-banana-pro": 1.5,
    "sora-2": 2.5,
    "sora-2-hd": 2.5,
}


class CLIError(Exception):
    """A problem that ends a command with a one-line message and an exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


# ------------------------------------------------------------------ output


class Secrets:
    """Strings that must never be printed or logged (the API key)."""

    values: tuple[str, ...] = ()

    @classmethod
    def add(cls, value: str) -> None:
        if value:
            cls.values = (*cls.values, value)

    @classmethod
    def redact(cls, text: str) -> str:
        for value in cls.values:
            text = text.replace(value, "***")
        return text


def say(message: str) -> None:
    print(Secrets.redact(message), file=sys.stderr, flush=True)


def api_key() -> str:
    key = os.environ.get("RUXA_API_KEY", "").strip()
    if not key:
        raise CLIError(
            "RUXA_API_KEY is not set: export your Ruxa API key "
            "(or add --simulate to try the built-in simulator)"
        )
    Secrets.add(key)
    return key


def base_url(args: argparse.Namespace) -> str:
    url: str = args.base_url or os.environ.get("RUXA_BASE_URL") or DEFAULT_BASE_URL
    return url.rstrip("/")


def fatal_code(exc: BaseException) -> int:
    if isinstance(exc, (AuthenticationError, InsufficientCreditsError, ServiceUnavailableError)):
        return EXIT_FATAL
    return EXIT_PARTIAL


# -------------------------------------------------------------- run: plan


@attrs.frozen
class _Step:
    """What to do with one job line of this run."""

    job: JobLine
    action: str  # new | resubmit | reattach | done | ambiguous | duplicate | invalid
    row: JobRecord | None = None
    fetch: tuple[tuple[int, str, Path], ...] = ()


def demo_sim_config() -> SimConfig:
    from .testing import ModelBehavior, RateLimit, SimConfig

    return SimConfig(
        models={
            name: ModelBehavior(median_seconds=median, sigma=0.4, min_seconds=0.3)
            for name, median in _SIM_MEDIANS.items()
        },
        create_limit=RateLimit(per_second=10.0, burst=16),
    )


def _rate_limits(args: argparse.Namespace) -> RateLimits:
    def burst(rate: float | None) -> int:
        return max(1, round(rate)) if rate is not None else 10

    return RateLimits(
        max_in_flight=args.concurrency,
        create_per_second=args.create_rate,
        create_burst=burst(args.create_rate),
        query_per_second=args.query_rate,
        query_burst=burst(args.query_rate),
    )


def poll_policy(args: argparse.Namespace, simulate: bool) -> PollPolicy:
    base = PollPolicy()
    if simulate:
        base = PollPolicy(first_check=1.0, min_interval=0.5, max_interval=2.0)
    try:
        return PollPolicy(
            first_check=args.first_check if args.first_check is not None else base.first_check,
            min_interval=args.poll_min if args.poll_min is not None else base.min_interval,
            max_interval=args.poll_max if args.poll_max is not None else base.max_interval,
        )
    except ValueError as exc:
        raise CLIError(f"bad polling option: {exc}") from None


def callback_address(args: argparse.Namespace) -> tuple[str, int] | None:
    if args.callback_bind is None:
        if args.callback_public_url is not None:
            raise CLIError("--callback-public-url needs --callback-bind HOST:PORT to listen on")
        return None
    host, sep, port = args.callback_bind.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise CLIError(f"--callback-bind must be HOST:PORT, got {args.callback_bind!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def _callbacks(args: argparse.Namespace) -> CallbackServer | None:
    address = callback_address(args)
    if address is None:
        return None
    from .webhooks import CallbackServer

    return CallbackServer(address[0], address[1], public_url=args.callback_public_url)


def prepare_out(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".ruxa-async-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CLIError(f"cannot write to the output folder {out}: {exc.strerror or exc}") from None


def check_jobs_file(path: Path) -> None:
    if not path.exists():
        raise CLIError(f"jobs file {path} not found")
    if path.is_dir():
        raise CLIError(f"jobs file {path} is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise CLIError(f"jobs file {path} cannot be read")


# ------------------------------------------------------------- run: runner


class BatchRun:
    """One ``ruxa-async run``: plan from file and journal, run, download, report."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.jobs_path: Path = args.jobs
        self.out: Path = args.out
        self.journal_path: Path = args.journal or (self.out / "journal.sqlite")
        self.simulate: bool = args.simulate
        self.dedupe: bool = not args.no_dedupe
        self.counters = BatchCounters()
        self.rows: dict[str, JobRecord] = {}
        self.files: dict[str, list[FileRecord]] = {}
        self.summary = JobsSummary()
        self.journal = Journal(self.journal_path)
        self.display: Display | None = None
        self.client: RuxaClient | None = None
        self.downloads: set[asyncio.Task[None]] = set()
        self.download_slots = asyncio.Semaphore(args.downloads)
        self.consumer: asyncio.Task[None] | None = None
        self.stop_reason: str | None = None
        self.stop_error: BaseException | None = None
        self.fatal: BaseException | None = None
        self.interrupted = False
        self.capped = False
        self.spent = 0.0
        self.unpriced: set[str] = set()

    # ------------------------------------------------------------ entry

    async def main(self) -> int:
        try:
            await self.journal.open()
        except JournalError as exc:
            raise CLIError(str(exc), EXIT_FATAL) from None
        try:
            return await self._main()
        finally:
            await self.journal.aclose()

    async def _main(self) -> int:
        self.rows, self.files = await self.journal.load()
        await self._check_endpoint()
        try:
            self.summary = await anyio.to_thread.run_sync(self._scan)
        except JobsFileError as exc:
            raise CLIError(str(exc)) from None
        self._plan_counts()
        if self.summary.total == 0:
            say(f"{PROG}: {self.jobs_path} has no jobs")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, self._on_signal)
        try:
            if self.simulate:
                from .testing import FakeRuxa

                async with FakeRuxa(demo_sim_config()) as fake:
                    await self._run(fake.api_key, fake.url)
            else:
                await self._run(api_key(), base_url(self.args))
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(NotImplementedError, RuntimeError):
                    loop.remove_signal_handler(sig)
        return await self._report()

    def _on_signal(self) -> None:
        if self.interrupted:
            say(f"{PROG}: interrupted again; quitting at once (the journal is consistent)")
            os._exit(EXIT_INTERRUPTED)
        self.interrupted = True
        say(f"{PROG}: interrupted; saving the journal (Ctrl-C again quits at once)")
        if self.consumer is not None:
            self.consumer.cancel()

    async def _check_endpoint(self) -> None:
        endpoint = "simulator" if self.simulate else base_url(self.args)
        recorded = await self.journal.get_meta("endpoint")
        if recorded is not None and recorded != endpoint and self.rows:
            where = "the built-in simulator" if recorded == "simulator" else recorded
            raise CLIError(
                f"the journal {self.journal_path} records jobs run against {where}; "
                "use another --out or --journal for this endpoint"
            )
        await self.journal.set_meta("endpoint", endpoint)
        if self.simulate:
            stale = [k for k, r in self.rows.items() if not r.state.is_final]
            if stale:
                await self.journal.forget(stale)
                for key in stale:
                    del self.rows[key]
                say(
                    f"{PROG}: {len(stale)} unfinished simulated jobs from an earlier run start "
                    "again (the simulator keeps no state between runs)"
                )

    def _scan(self) -> JobsSummary:
        c = self.counters

        def check(job: JobLine) -> None:
            row = self.rows.get(job.key)
            if row is None or row.state is JobState.UNSENT:
                return
            if row.fingerprint == job.fingerprint:
                if row.state.is_final:
                    c.skipped += 1
                elif row.ambiguous and not self.args.resubmit_ambiguous:
                    c.ambiguous += 1
                return
            raise JobsFileError(
                self.jobs_path,
                f"job {job.key!r} changed since the journal {self.journal_path} recorded it "
                "(its model or input differs); restore it, give it a new id, or use another "
                "--journal",
                line=job.line,
            )

        return scan_jobs(
            self.jobs_path, default_model=self.args.model, dedupe=self.dedupe, check=check
        )

    def _plan_counts(self) -> None:
        c = self.counters
        c.total = self.summary.total
        c.invalid = self.summary.invalid
        c.duplicates = self.summary.duplicates
        open_jobs = self.summary.valid - self.summary.duplicates
        c.todo = max(0, open_jobs - c.skipped - c.ambiguous)

    # -------------------------------------------------------------- run

    async def _run(self, key: str, base_url: str) -> None:
        self.client = RuxaClient(
            api_key=key,
            base_url=base_url,
            rate_limits=_rate_limits(self.args),
            poll=poll_policy(self.args, self.simulate),
            callbacks=_callbacks(self.args),
        )
        self.display = make_display(self.args.progress, self.counters, interval=self.args.interval)
        self.counters.started = time.monotonic()
        self.display.start()
        ticker = asyncio.create_task(self._tick(), name="ruxa-async progress")
        try:
            async with self.client:
                self.consumer = asyncio.create_task(self._consume(), name="ruxa-async batch")
                if self.interrupted:
                    self.consumer.cancel()
                await asyncio.wait({self.consumer})
                await self._finish_downloads(cancel=self.interrupted or self.fatal is not None)
                if not self.consumer.cancelled():
                    error = self.consumer.exception()
                    if error is not None:
                        raise error
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self._sample()
            self.display.stop()

    async def _consume(self) -> None:
        assert self.client is not None
        batch = self.client.as_completed(
            self._jobs(),
            max_pending=self.args.max_pending,
            timeout=self.args.timeout,
            on_event=self._on_event,
            before_create=self._before_create,
        )
        try:
            async with batch:
                async for outcome in batch:
                    self._on_outcome(outcome)
        except JournalError as exc:
            self.fatal = self.fatal or exc
        finally:
            self.stop_reason = batch.stop_reason
            self.stop_error = batch.stop_error

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self._sample()
            if self.display is not None:
                self.display.refresh()
            error = self.journal.error
            if error is not None and self.fatal is None:
                self._abort(error)

    def _sample(self) -> None:
        if self.client is not None:
            stats = self.client.statistics()
            self.counters.rate_limited = stats.rate_limited
            self.counters.requests = stats.requests_sent

    def _abort(self, error: BaseException) -> None:
        self.fatal = error
        log.error("stopping: %s", error)
        if self.consumer is not None:
            self.consumer.cancel()

    # ----------------------------------------------------------- intake

    async def _jobs(self) -> AsyncIterator[Job]:
        lines = read_jobs(self.jobs_path, default_model=self.args.model)
        yielded = 0
        try:
            while True:
                steps = await anyio.to_thread.run_sync(self._next_steps, lines)
                if not steps:
                    break
                for step in steps:
                    job = self._admit(step)
                    if job is not None:
                        yielded += 1
                        yield job
            self.counters.todo = yielded
        finally:
            lines.close()

    def _next_steps(self, lines: Generator[JobLine, None, None]) -> list[_Step]:
        """Runs in a worker thread: read a few lines and decide what each needs."""
        steps: list[_Step] = []
        for job in lines:
            steps.append(self._classify(job))
            if len(steps) >= _READ_BATCH:
                break
        return steps

    def _classify(self, job: JobLine) -> _Step:
        if job.problem() is not None:
            return _Step(job, "invalid")
        row = self.rows.get(job.key)
        if row is not None and row.state is not JobState.UNSENT:
            if row.state.is_final:
                return _Step(job, "done", row, self._missing_files(job.key, row))
            if row.task_id is not None:
                return _Step(job, "reattach", row)
            return _Step(job, "resubmit" if self.args.resubmit_ambiguous else "ambiguous", row)
        primary = self.summary.primaries.get(job.fingerprint, job.key) if self.dedupe else job.key
        if primary != job.key:
            return _Step(job, "duplicate")
        return _Step(job, "new")

    def _missing_files(self, key: str, row: JobRecord) -> tuple[tuple[int, str, Path], ...]:
        if row.state is not JobState.SUCCEEDED or self.args.no_download:
            return ()
        known = {f.index: f for f in self.files.get(key, ())}
        missing = []
        for index, url in enumerate(row.result_urls):
            dest = self.out / file_name(key, index, url)
            record = known.get(index)
            try:
                size: int | None = dest.stat().st_size
            except OSError:
                size = None
            if size is None or (record is not None and record.size not in (None, size)):
                missing.append((index, url, dest))
        return tuple(missing)

    def _admit(self, step: _Step) -> Job | None:
        job = step.job
        if step.action == "done":
            for index, url, dest in step.fetch:
                self._spawn_download(job.key, index, url, dest)
            return None
        if step.action in ("invalid", "duplicate", "ambiguous"):
            return None
        metadata = {"line": job.line, "fingerprint": job.fingerprint}
        if step.action == "reattach":
            assert step.row is not None
            self.counters.reattached += 1
            return Job(
                model=job.model,
                input=job.input,
                key=job.key,
                metadata=metadata,
                task_id=step.row.task_id,
            )
        cost = estimate_cost(job.model, job.input)
        if cost is None:
            if job.model not in self.unpriced and self.args.max_credits is not None:
                log.warning("no price known for %s; --max-credits counts it as 0", job.model)
            self.unpriced.add(job.model)
            cost = 0.0
        limit = self.args.max_credits
        if self.capped or (limit is not None and self.spent + cost > limit):
            if not self.capped:
                log.warning(
                    "--max-credits %g reached (estimated %g spent); submitting no more jobs",
                    limit,
                    self.spent,
                )
            self.capped = True
            self.counters.not_submitted += 1
            self.counters.todo = max(0, self.counters.todo - 1)
            return None
        self.spent += cost
        self.counters.estimated_credits = self.spent
        return Job(model=job.model, input=job.input, key=job.key, metadata=metadata)

    async def _before_create(self, job: Job) -> None:
        await self.journal.mark_submitting(_ref(job))

    def _on_event(self, event: ProgressEvent) -> None:
        if event.kind != "submitted" or event.task_id is None or event.job.task_id is not None:
            return
        self.counters.submitted += 1
        self.journal.record_task_id(_ref(event.job), event.task_id)

    # ---------------------------------------------------------- outcomes

    def _on_outcome(self, outcome: JobOutcome) -> None:
        c = self.counters
        c.finished += 1
        job = _ref(outcome.job)
        status = outcome.status
        error = outcome.error
        if isinstance(error, JournalError):
            self._abort(error)
            return
        if status is OutcomeStatus.SUCCEEDED:
            assert outcome.info is not None
            c.succeeded += 1
            self._record_success(job, outcome.info)
        elif status is OutcomeStatus.FAILED:
            assert outcome.info is not None
            c.failed += 1
            info = outcome.info
            reason = info.fail_msg or "the task failed"
            if info.fail_code:
                reason += f" (failCode {info.fail_code})"
            self.journal.record_outcome(job, JobState.FAILED, task_id=info.task_id, error=reason)
        elif status is OutcomeStatus.NOT_SUBMITTED:
            c.not_submitted += 1
            reason = error.reason if isinstance(error, NotSubmittedError) else str(error)
            self.journal.record_outcome(job, JobState.UNSENT, error=f"not submitted: {reason}")
        elif outcome.task_id is not None:
            c.errors += 1
            reason = error_text(error)
            if isinstance(error, TaskTimeoutError):
                reason = f"gave up waiting after --timeout {self.args.timeout:g} s"
            self.journal.record_outcome(
                job, JobState.SUBMITTED, task_id=outcome.task_id, error=reason
            )
        elif _maybe_created(error):
            c.ambiguous += 1
            self.journal.record_outcome(job, JobState.AMBIGUOUS, error=error_text(error))
        else:
            c.errors += 1
            self.journal.record_outcome(job, JobState.UNSENT, error=error_text(error))

    def _record_success(self, job: JobRef, info: TaskInfo) -> None:
        urls = info.result_urls
        self.journal.record_outcome(job, JobState.SUCCEEDED, task_id=info.task_id, result_urls=urls)
        if self.args.no_download:
            return
        for index, url in enumerate(urls):
            dest = self.out / file_name(job.key, index, url)
            self._spawn_download(job.key, index, url, dest)

    # --------------------------------------------------------- downloads

    def _spawn_download(self, key: str, index: int, url: str, dest: Path) -> None:
        task = asyncio.get_running_loop().create_task(self._download(key, index, url, dest))
        self.downloads.add(task)
        task.add_done_callback(self.downloads.discard)

    async def _download(self, key: str, index: int, url: str, dest: Path) -> None:
        assert self.client is not None
        c = self.counters
        async with self.download_slots:
            c.downloads_running += 1
            try:
                await self.client.download(
                    url,
                    dest,
                    attempts=self.args.download_attempts,
                    timeout=self.args.download_timeout,
                )
                size = await anyio.to_thread.run_sync(_size_of, dest)
            except DownloadError as exc:
                c.downloads_failed += 1
                log.warning("could not download result %d of job %s: %s", index, key, exc)
                self.journal.record_file(
                    FileRecord(
                        key=key,
                        index=index,
                        url=url,
                        path=dest.name,
                        state="failed",
                        error=str(exc),
                    )
                )
                return
            finally:
                c.downloads_running -= 1
        c.downloads_done += 1
        self.journal.record_file(
            FileRecord(key=key, index=index, url=url, path=dest.name, state="done", size=size)
        )

    async def _finish_downloads(self, *, cancel: bool) -> None:
        while self.downloads:
            pending = list(self.downloads)
            if cancel:
                for task in pending:
                    task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    # ------------------------------------------------------------ report

    async def _report(self) -> int:
        try:
            await self.journal.flush()
        except JournalError as exc:
            self.fatal = self.fatal or exc
        if self.fatal is not None:
            say(
                f"{PROG}: error: {self.fatal}; results.jsonl was not updated (fix the problem "
                "and run the same command again)"
            )
            return EXIT_FATAL
        self.rows, self.files = await self.journal.load()
        tally, problems = await anyio.to_thread.run_sync(self._write_results)
        self._print_summary(tally, problems)
        if self.interrupted:
            say(f"{PROG}: interrupted; run the same command again to resume")
            return EXIT_INTERRUPTED
        if isinstance(self.stop_error, ServiceUnavailableError):
            say(f"{PROG}: error: {self.stop_error}")
            return EXIT_FATAL
        if self.stop_error is not None and fatal_code(self.stop_error) == EXIT_FATAL:
            say(
                f"{PROG}: error: stopped submitting: {self.stop_reason}; fix it and run the "
                "same command again to resume"
            )
            return EXIT_FATAL
        if tally.get("succeeded", 0) == self.summary.total:
            return EXIT_OK
        return EXIT_PARTIAL

    def _not_sent_reason(self) -> str:
        if self.capped:
            return f"not submitted: --max-credits {self.args.max_credits:g} reached"
        if self.stop_reason is not None:
            return f"not submitted: {self.stop_reason}"
        if self.interrupted or self.fatal is not None:
            return "not submitted: the run was interrupted"
        return "not submitted"

    def _write_results(self) -> tuple[dict[str, int], list[str]]:
        """Runs in a worker thread: one results.jsonl line per job, in file order.

        Also returns the problems for the summary, one line per distinct
        (status, reason): a rejected key is one line, not one per job.
        """
        tally: dict[str, int] = {}
        groups: dict[tuple[str, str], list[str]] = {}
        counts: dict[tuple[str, str], int] = {}
        final = self.out / "results.jsonl"
        part = self.out / ".results.jsonl.part"
        with part.open("w", encoding="utf-8") as out:
            for job in read_jobs(self.jobs_path, default_model=self.args.model):
                entry = self._result(job)
                status = entry["status"]
                tally[status] = tally.get(status, 0) + 1
                if status != "succeeded":
                    reason = str(entry["error"] or "")
                    if reason.startswith("not submitted: "):
                        reason = reason[len("not submitted: ") :]
                    group = (status, reason)
                    counts[group] = counts.get(group, 0) + 1
                    where = groups.setdefault(group, [])
                    if len(where) < 3 and (group in groups or len(groups) <= _MAX_PROBLEMS):
                        where.append(f"line {job.line} ({job.key})")
                out.write(json.dumps(entry, ensure_ascii=False) + "\n")
        os.replace(part, final)
        problems = []
        for (status, reason), where in list(groups.items())[:_MAX_PROBLEMS]:
            n = counts[(status, reason)]
            shown = ", ".join(where) + (", ..." if n > len(where) else "")
            label = status.replace("_", " ")
            head = f"{n} jobs {label}" if n > 1 else label
            problems.append(f"  {head}: {reason} [{shown}]" if reason else f"  {head} [{shown}]")
        return tally, problems

    def _result(self, job: JobLine) -> dict[str, Any]:
        entry: dict[str, Any] = {"key": job.key, "line": job.line, "model": job.model}
        if job.metadata is not None:
            entry["metadata"] = job.metadata
        problem = job.problem()
        if problem is not None:
            entry.update(
                status="invalid",
                task_id=None,
                state=None,
                result_urls=[],
                files=[],
                error=f"line {job.line}: input.{problem.field}: {problem}"
                if problem.field not in ("model", "input")
                else f"line {job.line}: {problem}",
                field=problem.field,
            )
            return entry
        source = job.key
        row = self.rows.get(job.key)
        if (row is None or row.state is JobState.UNSENT) and self.dedupe:
            primary = self.summary.primaries.get(job.fingerprint, job.key)
            if primary != job.key:
                source = primary
                entry["same_as"] = primary
                row = self.rows.get(primary)
        entry.update(self._from_row(source, row))
        return entry

    def _from_row(self, key: str, row: JobRecord | None) -> dict[str, Any]:
        result: dict[str, Any] = {
            "status": "not_submitted",
            "task_id": None,
            "state": None,
            "result_urls": [],
            "files": [],
            "error": None,
        }
        if row is None or row.state is JobState.UNSENT:
            result["error"] = (
                row.error if row is not None and row.error else self._not_sent_reason()
            )
            return result
        result["task_id"] = row.task_id
        if row.ambiguous:
            result.update(status="ambiguous", error=_AMBIGUOUS_TEXT)
        elif row.state is JobState.SUBMITTED:
            reason = row.error or "the run ended before the task finished"
            result.update(status="pending", error=f"{reason}; it may still finish: run again")
        elif row.state is JobState.FAILED:
            result.update(status="failed", state="fail", error=row.error)
        else:
            result.update(state="success", result_urls=list(row.result_urls))
            status, files, error = "succeeded", [], None
            records = {f.index: f for f in self.files.get(key, ())}
            if not self.args.no_download:
                for index, url in enumerate(row.result_urls):
                    name = file_name(key, index, url)
                    if (self.out / name).exists():
                        files.append(name)
                        continue
                    status = "download_failed"
                    record = records.get(index)
                    error = error or (
                        f"{name}: {record.error}"
                        if record is not None and record.error
                        else f"{name} was not downloaded"
                    )
            result.update(status=status, files=files, error=error)
        return result

    def _print_summary(self, tally: dict[str, int], problems: list[str]) -> None:
        c = self.counters
        rows: list[tuple[str, str]] = [("jobs in file", str(self.summary.total))]
        for status in (
            "succeeded",
            "failed",
            "download_failed",
            "invalid",
            "not_submitted",
            "ambiguous",
            "pending",
        ):
            if tally.get(status):
                rows.append((status.replace("_", " "), str(tally[status])))
        if c.skipped:
            rows.append(("finished in an earlier run", str(c.skipped)))
        if self.summary.duplicates:
            rows.append(("identical jobs shared", str(self.summary.duplicates)))
        rows.append(("tasks created / re-attached", f"{c.submitted} / {c.reattached}"))
        if not self.args.no_download:
            saved = f"{c.downloads_done} saved"
            if c.downloads_failed:
                saved += f", {c.downloads_failed} failed"
            rows.append(("files", saved))
        rows.append(("requests / 429s", f"{c.requests} / {c.rate_limited}"))
        rows.append(("estimated credits", f"{self.spent:g}"))
        rows.append(("time", f"{c.elapsed:.1f} s"))
        rows.append(("results", str(self.out / "results.jsonl")))
        if len(problems) == _MAX_PROBLEMS:
            problems = [*problems, "  ... and maybe more: see results.jsonl"]
        title = "ruxa-async run" + (" (simulated)" if self.simulate else "")
        print_summary(title, rows, [Secrets.redact(p) for p in problems])


def _ref(job: Job) -> JobRef:
    meta = job.metadata or {}
    return JobRef(
        key=job.key or "",
        line=int(meta.get("line", 0)),
        fingerprint=str(meta.get("fingerprint", "")),
        model=job.model,
    )


def _size_of(path: Path) -> int:
    return path.stat().st_size


def error_text(error: BaseException | None) -> str:
    if error is None:
        return "unknown error"
    return Secrets.redact(f"{type(error).__name__}: {error}")


def _maybe_created(error: BaseException | None) -> bool:
    """True when a failed create may still have created (and charged) a task."""
    if isinstance(error, APIConnectionError):
        return error.request_sent
    return isinstance(error, (ServerError, MalformedResponseError))
