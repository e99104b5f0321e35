"""The engine of ``ruxa-async run``: plan, run, download, report, over a few rooms.

:func:`run_jobs` is the entry point the CLI calls with a :class:`RunOptions`.
Every job is journaled before its create request is sent, result files are
downloaded as each task succeeds, and ``results.jsonl`` and ``index.html``
get one entry per job. Running the same command again resumes without paying
twice. The rooms: :mod:`._plan` (jobs file + journal -> steps),
:mod:`._sink` (outcomes -> journal), :mod:`._fetch` (downloads),
:mod:`._report` (results, gallery, summary).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio.to_thread
import attrs

from ._checked import META_NAME, counted_from_journal, file_digest, recall, remember
from ._client import RuxaClient
from ._download import file_name
from ._errors import AuthenticationError, InsufficientCreditsError, ServiceUnavailableError
from ._fetch import DownloadPipeline, FileWanted, wanted
from ._fleet import coordinator_from_url
from ._jobsfile import JobsFileError
from ._jobstatus import JobStatus
from ._journal import Journal, JournalError
from ._journal_reader import JournalReader
from ._models import Job
from ._plan import Planner, Step, Survey, survey
from ._progress import BatchCounters, Display, make_display
from ._report import Report, credits_text, print_report, write_report
from ._run_options import RunEnd, RunError, RunOptions, RunUsageError
from ._signals import STOP_SIGNALS, signal_handlers
from ._sink import JournalSink
from .catalog import estimate_cost

__all__ = [
    "RunEnd",
    "RunError",
    "RunFatalError",
    "RunOptions",
    "RunResult",
    "RunUsageError",
    "credits_text",
    "dry_run",
    "file_name",
    "prepare_out",
    "run_jobs",
]

log = logging.getLogger("ruxa_async")


class RunFatalError(RunError):
    """The run could not keep its journal; nothing more is safe to do (run again after a fix)."""


@attrs.frozen(kw_only=True)
class RunResult:
    """How a run ended, and the one line to tell the user about it (if any)."""

    end: RunEnd
    message: str | None = None


def _say(options: RunOptions, message: str) -> None:
    print(options.redact(f"ruxa-async: {message}"), file=sys.stderr, flush=True)


def prepare_out(out: Path) -> None:
    """Create the output folder and check that it can be written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".ruxa-async-probe-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise RunUsageError(
            f"cannot write to the output folder {out}: {exc.strerror or exc}"
        ) from None


def _check_jobs_file(path: Path) -> None:
    if not path.exists():
        raise RunUsageError(f"jobs file {path} not found")
    if path.is_dir():
        raise RunUsageError(f"jobs file {path} is a folder, not a file")
    if not os.access(path, os.R_OK):
        raise RunUsageError(f"jobs file {path} cannot be read")


async def run_jobs(options: RunOptions) -> RunResult:
    """Run the jobs file of ``options`` to the end (or resume it); see :class:`RunResult`.

    Raises :class:`RunUsageError` before sending anything when the request
    cannot be carried out, :class:`RunFatalError` when the journal fails.
    """
    _check_jobs_file(options.jobs)
    prepare_out(options.out)
    prepare_out(options.journal.parent)
    return await _BatchRun(options).main()


def dry_run(options: RunOptions) -> Survey:
    """Check the file and read the journal (if any): what a run would do; nothing is written."""
    _check_jobs_file(options.jobs)
    with JournalReader(options.journal) as reader:
        try:
            return survey(options, reader)
        except (JobsFileError, JournalError) as exc:
            raise RunUsageError(str(exc)) from None


class _Spend:
    """The estimated spend of this run against ``--max-credits``."""

    def __init__(self, limit: float | None) -> None:
        self.limit = limit
        self.spent = 0.0
        self.capped = False
        self._unpriced: set[str] = set()

    def admit(self, step: Step) -> bool:
        job = step.job
        cost = estimate_cost(job.model, job.input)
        if cost is None:
            if job.model not in self._unpriced and self.limit is not None:
                log.warning("no price known for %s; --max-credits counts it as 0", job.model)
            self._unpriced.add(job.model)
            cost = 0.0
        if self.capped or (self.limit is not None and self.spent + cost > self.limit):
            if not self.capped:
                log.warning(
                    "--max-credits %g reached (estimated %g spent); submitting no more jobs",
                    self.limit,
                    self.spent,
                )
            self.capped = True
            return False
        self.spent += cost
        return True


class _BatchRun:
    """One run: the orchestrator over the planner, the sink, the downloads and the report."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options
        self.counters = BatchCounters()
        self.journal = Journal(options.journal)
        self.reader = JournalReader(options.journal)
        self.spend = _Spend(options.max_credits)
        self.sink = JournalSink(
            self.journal,
            self.counters,
            timeout=options.timeout,
            redact=options.redact,
            on_abort=self._abort,
        )
        self.survey = Survey()
        self.client: RuxaClient | None = None
        self.downloads: DownloadPipeline | None = None
        self.consumer: asyncio.Task[None] | None = None
        self.stop_reason: str | None = None
        self.stop_error: BaseException | None = None
        self.fatal: BaseException | None = None
        self.interrupted = False

    async def main(self) -> RunResult:
        try:
            async with self.journal:
                await self._check_endpoint()
                await self._survey()
                self._count_plan()
                with signal_handlers(dict.fromkeys(STOP_SIGNALS, self._on_signal)):
                    await self._run()
                return await self._finish()
        except JournalError as exc:
            raise RunFatalError(str(exc)) from None
        finally:
            self.reader.close()

    async def _check_endpoint(self) -> None:
        endpoint = self.options.endpoint
        recorded = await self.journal.get_meta("endpoint")
        if recorded is not None and recorded != endpoint and await self.journal.has_jobs():
            where = "the built-in simulator" if recorded == "simulator" else recorded
            raise RunUsageError(
                f"the journal {self.options.journal} records jobs run against {where}; "
                "use another --out or --journal for this endpoint"
            )
        await self.journal.set_meta("endpoint", endpoint)
        if self.options.simulate:
            stale = await self.journal.forget_unfinished()
            if stale:
                _say(
                    self.options,
                    f"{stale} unfinished simulated jobs from an earlier run start again "
                    "(the simulator keeps no state between runs)",
                )

    async def _survey(self) -> None:
        """Check the whole file, unless the journal shows these very bytes were checked."""
        o = self.options
        digest = await anyio.to_thread.run_sync(file_digest, o.jobs)
        jobs = recall(o, digest, await self.journal.get_meta(META_NAME))
        if jobs is not None:
            log.info("%s was checked in full by an earlier run (same SHA-256)", o.jobs)
            self.survey = await anyio.to_thread.run_sync(counted_from_journal, o, self.reader, jobs)
            return
        try:
            self.survey = await anyio.to_thread.run_sync(survey, o, self.reader)
        except JobsFileError as exc:
            raise RunUsageError(str(exc)) from None
        record = remember(o, digest, self.survey.jobs)
        if record is not None:
            await self.journal.set_meta(META_NAME, record)

    def _count_plan(self) -> None:
        c, s = self.counters, self.survey
        c.total = s.jobs.total
        c.invalid = s.jobs.invalid
        c.duplicates = s.jobs.duplicates
        c.skipped = s.done
        c.ambiguous = s.ambiguous
        c.todo = s.todo
        if s.jobs.total == 0:
            _say(self.options, f"{self.options.jobs} has no jobs")

    def _on_signal(self) -> None:
        if self.interrupted:
            _say(self.options, "interrupted again; quitting at once (the journal is consistent)")
            os._exit(130)
        self.interrupted = True
        _say(self.options, "interrupted; saving the journal (Ctrl-C again quits at once)")
        if self.consumer is not None:
            self.consumer.cancel()

    def _abort(self, error: BaseException) -> None:
        if self.fatal is None:
            self.fatal = error
            log.error("stopping: %s", error)
        if self.consumer is not None:
            self.consumer.cancel()

    # ------------------------------------------------------------------ run

    async def _run(self) -> None:
        if self.options.simulator is not None:
            from .testing import FakeRuxa

            async with FakeRuxa(self.options.simulator) as fake:
                await self._run_against(fake.api_key, fake.url)
        else:
            await self._run_against(self.options.api_key, self.options.base_url)

    async def _run_against(self, key: str | None, url: str) -> None:
        o = self.options
        callbacks = None
        if o.callback_bind is not None:
            from .webhooks import CallbackServer

            callbacks = CallbackServer(*o.callback_bind, public_url=o.callback_public_url)
        self.client = RuxaClient(
            api_key=key,
            base_url=url,
            rate_limits=o.rate_limits,
            poll=o.poll,
            callbacks=callbacks,
            coordinator=coordinator_from_url(o.redis_url),
            outage=o.outage,
        )
        display = make_display(o.progress, self.counters, interval=o.interval)
        self.counters.started = time.monotonic()
        display.start()
        ticker = asyncio.create_task(self._tick(display), name="ruxa-async progress")
        try:
            async with self.client:
                self.downloads = DownloadPipeline(
                    self.client,
                    self.counters,
                    self.sink.record_file,
                    workers=o.downloads,
                    attempts=o.download_attempts,
                    timeout=o.download_timeout,
                )
                async with self.downloads:
                    self.consumer = asyncio.create_task(self._consume(), name="ruxa-async batch")
                    if self.interrupted:
                        self.consumer.cancel()
                    await asyncio.wait({self.consumer})
                    await self.downloads.finish(cancel=self.interrupted or self.fatal is not None)
                if not self.consumer.cancelled() and self.consumer.exception() is not None:
                    raise self.consumer.exception()  # type: ignore[misc]
        finally:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            self._sample()
            display.stop()

    async def _tick(self, display: Display) -> None:
        while True:
            await asyncio.sleep(0.25)
            self._sample()
            display.refresh()
            if self.journal.error is not None and self.fatal is None:
                self._abort(self.journal.error)

    def _sample(self) -> None:
        if self.client is not None:
            stats = self.client.statistics()
            self.counters.rate_limited = stats.rate_limited
            self.counters.requests = stats.requests_sent

    async def _consume(self) -> None:
        assert self.client is not None
        batch = self.client.as_completed(
            self._jobs(),
            max_pending=self.options.max_pending,
            timeout=self.options.timeout,
            on_event=self.sink.on_event,
            on_send=self.sink.on_send,
            on_unsent=self.sink.on_unsent,
        )
        try:
            async with batch:
                async for outcome in batch:
                    status = self.sink.on_outcome(outcome)
                    if status is JobStatus.SUCCEEDED and outcome.info is not None:
                        key = outcome.job.key or ""
                        await self._fetch(wanted(self.options.out, key, outcome.info.result_urls))
        except JournalError as exc:
            self.fatal = self.fatal or exc
        finally:
            self.stop_reason = batch.stop_reason
            self.stop_error = batch.stop_error

    async def _fetch(self, files: list[FileWanted]) -> None:
        if self.options.download and self.downloads is not None:
            for file in files:
                await self.downloads.put(file)

    async def _jobs(self) -> AsyncIterator[Job]:
        planner = Planner(self.options, self.reader, self.survey.jobs.shared)
        try:
            while steps := await anyio.to_thread.run_sync(planner.next_batch):
                for step in steps:
                    job = await self._admit(step)
                    if job is not None:
                        yield job
        finally:
            planner.close()

    async def _admit(self, step: Step) -> Job | None:
        if step.status.is_final:
            missing = [
                FileWanted(key=step.job.key, index=m.index, url=m.url, dest=m.dest)
                for m in step.missing
            ]
            await self._fetch(missing)
            return None
        if step.status is JobStatus.PENDING:
            self.counters.reattached += 1
            return self.sink.job(step.job, task_id=step.task_id)
        if not step.sends(self.options.resubmit_ambiguous, self.options.resubmit_lost):
            return None
        if not self.spend.admit(step):
            self.counters.not_submitted += 1
            self.counters.todo = max(0, self.counters.todo - 1)
            return None
        self.counters.estimated_credits = self.spend.spent
        return self.sink.job(step.job)

    # --------------------------------------------------------------- report

    def _not_sent(self) -> str:
        if self.spend.capped:
            return f"not submitted: --max-credits {self.spend.limit:g} reached"
        if self.stop_reason is not None:
            return f"not submitted: {self.stop_reason}"
        if self.interrupted or self.fatal is not None:
            return "not submitted: the run was interrupted"
        return "not submitted"

    async def _finish(self) -> RunResult:
        try:
            await self.journal.flush()
        except JournalError as exc:
            self.fatal = self.fatal or exc
        if self.fatal is not None:
            raise RunFatalError(
                f"{self.fatal}; results.jsonl was not updated (fix the problem and run the "
                "same command again)"
            )
        report: Report = await anyio.to_thread.run_sync(
            write_report, self.options, self.reader, self.survey.jobs, self._not_sent()
        )
        print_report(self.options, report, self.counters, self.survey.jobs, self.spend.spent)
        if self.interrupted:
            return RunResult(
                end=RunEnd.INTERRUPTED, message="interrupted; run the same command again to resume"
            )
        if isinstance(self.stop_error, ServiceUnavailableError):  # one line naming the URL
            return RunResult(end=RunEnd.STOPPED, message=str(self.stop_error))
        if isinstance(self.stop_error, (AuthenticationError, InsufficientCreditsError)):
            return RunResult(
                end=RunEnd.STOPPED,
                message=f"stopped submitting: {self.stop_reason}; fix it and run the same "
                "command again to resume",
            )
        return RunResult(end=RunEnd.COMPLETE if report.complete else RunEnd.PARTIAL)
