"""Run one workflow over many rows of inputs, a few rows at once, resumably (`pipeline-ex batch`).

The inputs file is JSON Lines: each line is one JSON object of inputs, as `arun(loaded, inputs)` takes
them. Row N is line N of the file; blank lines are not rows, but they keep their number, so errors and
results name `rows.jsonl:LINE` exactly. The file is read lazily, so it may be large.

The output file is JSON Lines too, one line per row, in the order rows finish (not in row order; `row` is
the key):

    {"row": 3, "inputs": {...}, "status": "ok", "run_id": "...", "steps": {...}, "error": null,
     "usage": {"input_tokens": 5, "output_tokens": 8, "total_tokens": 13}}

Each line is written whole with one write, straight to the operating system, so a stopped batch leaves
only complete lines. Running the same batch again skips every row already in the output file, whatever
its status (to retry failed rows, delete their lines first). A last line with no newline, or that is not
JSON (a batch killed while writing), is dropped from the file with a warning before anything is added.

How a row is run is pluggable: `run_batch` takes a `RowRunner`, an async callable `(row, inputs) ->
RowOutcome`. The default, `local_row_runner`, runs the workflow with `arun` on this process's event loop.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import warnings
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

from pipeline_ex.errors import PipelineError, ProviderConfigError, ProviderNotInstalledError, StepError
from pipeline_ex.file_lock import try_lock
from pipeline_ex.redaction import redact_text

if TYPE_CHECKING:
    from pipeline_ex.events import Usage
    from pipeline_ex.workflow.loader import LoadedStep, LoadedWorkflow

DEFAULT_CONCURRENCY = 4
RowStatus = Literal["ok", "failed"]


class BatchError(PipelineError):
    """A batch cannot start: its inputs or output file is missing, unreadable, locked or not a batch's."""


class BatchWarning(UserWarning):
    """Something a batch did on its own that its user should know about (a dropped line, overwritten files)."""


@dataclass
class RowOutcome:
    """What running one row produced; JSON-ready, so a runner in another process can send it back.

    :param status: `ok`, or `failed` when the run raised.
    :param run_id: the row's run id; None when the run failed before it started (bad inputs).
    :param steps: each top-level step's text, by step id (see `steps_text`); empty for a failed row.
    :param error: `{"type", "message", "step"?}` for a failed row (see `row_error`), else None.
    :param usage: the row's tokens, `{"input_tokens", "output_tokens", "total_tokens"}`; None when no
        provider reported usage.
    :param outputs: step path -> the file its `output_to_file` wrote (not part of the output line; a batch
        uses it to warn when rows overwrite each other's files).
    """

    status: RowStatus
    run_id: str | None = None
    steps: dict[str, Any] = field(default_factory=dict)
    error: dict[str, Any] | None = None
    usage: dict[str, int | None] | None = None
    outputs: dict[str, str] = field(default_factory=dict)


RowRunner = Callable[[int, dict[str, Any]], Awaitable[RowOutcome]]
"""Runs one row: `await runner(row_number, inputs)` returns its `RowOutcome`.

A runner records a row's own failures (bad inputs, a failing step) in the outcome it returns. What it
raises stops the whole batch: the rows still running are cancelled and not written, and the exception
propagates from `run_batch`. Cancellation must propagate as `asyncio.CancelledError`.
"""


@dataclass
class BatchSummary:
    """The counts of a batch, updated as rows finish (`on_progress` sees it grow) and returned at the end.

    `ok`, `failed` and the tokens count the rows run now; `skipped` counts the rows of the inputs file
    already in the output file, and `earlier_failed` the failed rows the output file held before this run.
    """

    rows_file: Path
    output: Path
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    earlier_failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    seconds: float = 0.0

    @property
    def done(self) -> int:
        """The rows of the inputs file that are in the output file now (skipped, or written by this run)."""
        return self.ok + self.failed + self.skipped

    @property
    def any_failed(self) -> bool:
        """Whether the output file holds a failed row (from this run or an earlier one): exit code 1."""
        return self.failed + self.earlier_failed > 0

    def describe(self) -> str:
        """The summary line: `190 ok, 10 failed, 0 skipped (already in results.jsonl); 12,345 tokens ...`."""
        skipped = f"{self.skipped:,} skipped (already in {self.output}"
        if self.earlier_failed:
            skipped += f"; {self.earlier_failed:,} failed in an earlier run"
        tokens = f"{self.total_tokens:,} tokens"
        if self.input_tokens or self.output_tokens:
            tokens += f" ({self.input_tokens:,} prompt + {self.output_tokens:,} completion)"
        return f"{self.ok:,} ok, {self.failed:,} failed, {skipped}); {tokens}; {self.seconds:.1f} s"

    def _add_usage(self, usage: Mapping[str, int | None] | None) -> None:
        if not usage:
            return
        prompt, completion = usage.get("input_tokens") or 0, usage.get("output_tokens") or 0
        self.input_tokens += prompt
        self.output_tokens += completion
        total = usage.get("total_tokens")
        self.total_tokens += total if total is not None else prompt + completion


ProgressCallback = Callable[[BatchSummary, dict[str, Any] | None], None]
"""Told of progress: `(summary, line)` after each row is written (`line` is what was written), and
`(summary, None)` after each row skipped as already done."""


# -- the inputs file ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Row:
    """One row of the inputs file: its number (its line) and its inputs, or why the line is not a row."""

    number: int
    inputs: dict[str, Any] | None
    problem: str | None = None
    """Why the line is not a JSON object of inputs, naming the file and line and the fix."""


def _is_blank(raw: bytes) -> bool:
    return not raw.strip()


def count_rows(rows_path: str | os.PathLike[str]) -> int:
    """The number of rows of an inputs file (its non-blank lines), counted quickly without parsing them."""
    with open(rows_path, "rb") as file:
        return sum(1 for raw in file if not _is_blank(raw))


def _parse_row(number: int, raw: bytes, shown: str) -> Row:
    where = f"{shown}:{number}"
    if number == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a byte-order mark some editors write
        raw = raw[3:]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return Row(
            number,
            None,
            f"{where}: the line is not UTF-8 text ({error.reason} at byte {error.start}); "
            "save the inputs file as UTF-8",
        )
    try:
        value = json.loads(text)
    except ValueError as error:
        reason = getattr(error, "msg", str(error))
        column = getattr(error, "colno", None)
        at = f" at column {column}" if column is not None else ""
        snippet = text.strip()
        snippet = snippet if len(snippet) <= 60 else snippet[:57] + "..."
        return Row(
            number,
            None,
            f"{where}: not JSON ({reason}{at}): {snippet!r}; each line is one JSON object of inputs, "
            'e.g. {"topic": "tides"}',
        )
    if not isinstance(value, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(value), "a number")
        return Row(number, None, f'{where}: a row is a JSON object of inputs, e.g. {{"topic": "tides"}}, not {kind}')
    return Row(number, value)


def read_rows(rows_path: str | os.PathLike[str]) -> Iterator[Row]:
    """The rows of an inputs file, read lazily; row N is line N (blank lines are not rows).

    A line that is not a JSON object is yielded as a `Row` with its `problem`, not raised.
    """
    with open(rows_path, "rb") as file:
        yield from _rows_of(file, os.fspath(rows_path))


def _rows_of(file: BinaryIO, shown: str) -> Iterator[Row]:
    for number, raw in enumerate(file, start=1):
        if not _is_blank(raw):
            yield _parse_row(number, raw, shown)


# -- the output file ---------------------------------------------------------------------------------------


@dataclass
class _Done:
    """What the output file held when the batch started: each row's status, and a line dropped from it."""

    rows: dict[int, str] = field(default_factory=dict)
    dropped: int | None = None
    """The number of the incomplete last line that was dropped, if there was one."""


def _result_row(raw: bytes) -> tuple[int, str] | None:
    """The row number and status of an output line, or None if it is not one."""
    try:
        record = json.loads(raw)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    row, status = record.get("row"), record.get("status")
    if type(row) is not int or row < 1 or status not in ("ok", "failed"):
        return None
    return row, status


def _scan_output(output_path: Path, fd: int) -> _Done:
    """Read the rows the output file holds; drop an incomplete last line (truncating the file through `fd`).

    :raises BatchError: for a line before the last that is not a batch result line.
    """
    done = _Done()
    shown = os.fspath(output_path)
    offset = 0
    bad: tuple[int, int, bytes] | None = None  # (line, offset, text) of a line that is no result line
    with open(output_path, "rb") as file:
        for number, raw in enumerate(file, start=1):
            if bad is not None:
                line, _, text = bad
                snippet = text.decode("utf-8", "replace").strip()[:60]
                raise BatchError(
                    f"{shown}:{line}: not a line of batch results ({snippet!r}); a results file holds only "
                    "the lines `pipeline-ex batch` writes. Delete or fix that line, or give another --output"
                )
            complete = raw.endswith(b"\n")
            found = _result_row(raw) if complete else None
            if found is not None:
                done.rows[found[0]] = found[1]
            elif not (complete and _is_blank(raw)):
                bad = (number, offset, raw)
            offset += len(raw)
    if bad is not None:
        line, start, text = bad
        os.ftruncate(fd, start)
        if not _is_blank(text):
            done.dropped = line
            why = "not JSON" if text.endswith(b"\n") else "no newline at its end"
            warnings.warn(
                BatchWarning(
                    f"{shown}:{line}: dropped an incomplete last line ({len(text)} bytes, {why}), left by a "
                    "batch that stopped while writing it; that row runs again"
                ),
                stacklevel=3,
            )
    return done


def _open_output(output_path: Path) -> BinaryIO:
    """Open (or create) the output file for appending, locked against a second batch."""
    shown = os.fspath(output_path)
    if output_path.is_dir():
        raise BatchError(f"--output {shown} is a directory; give a file name, e.g. {shown}/results.jsonl")
    try:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        file = open(output_path, "ab", buffering=0)  # noqa: SIM115 - closed by run_batch
    except OSError as error:
        raise BatchError(f"cannot write the results file {shown}: {error.strerror or error}") from None
    if not try_lock(file.fileno()):
        file.close()
        raise BatchError(
            f"{shown} is being written by another batch (it locks its results file); wait for that one to "
            "finish, or give this one another --output"
        )
    return file


def _dumps(line: dict[str, Any]) -> bytes:
    text = json.dumps(line, ensure_ascii=False)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from the model or a python step: keep it, escaped
        return (json.dumps(line, ensure_ascii=True) + "\n").encode("ascii")


def _write_line(file: BinaryIO, data: bytes) -> None:
    """Append one whole line: one write to the operating system (repeated only if the disk takes less)."""
    view = memoryview(data)
    while view:
        written = os.write(file.fileno(), view)
        view = view[written:]


def row_line(row: int, inputs: dict[str, Any] | None, outcome: RowOutcome) -> dict[str, Any]:
    """The output line of a row: `row`, `inputs`, `status`, `run_id`, `steps`, `error` and `usage`."""
    return {
        "row": row,
        "inputs": inputs,
        "status": outcome.status,
        "run_id": outcome.run_id,
        "steps": outcome.steps,
        "error": outcome.error,
        "usage": outcome.usage,
    }


# -- running one row in this process -----------------------------------------------------------------------


def steps_text(loaded: LoadedWorkflow, result: Any) -> dict[str, Any]:
    """Each top-level step's text from a `RunResult`, in the workflow's order.

    An LLM step gives its text; a python step the value it returned (as JSON; `repr` for what JSON cannot
    hold); a `for_each` a list with one mapping of its children per item, and a `loop` one per iteration;
    a nested workflow a mapping of its own steps; a `parallel` group the list of its children's ids (each
    child is listed under its own id too); a skipped step null; a step that failed under
    `on_error: continue` `{"status": "failed", "error": {...}, "text": partial text}`. `set` steps are
    left out (they set variables).
    """
    steps: dict[str, Any] = {}

    def add(item: LoadedStep) -> None:
        if item.id in result.steps:
            steps[item.id] = _text_of(result.steps[item.id])
        elif item.id in result.values:
            steps[item.id] = _text_of(result.values[item.id])
        if item.kind == "parallel":
            for child in item.children:
                add(child)

    for item in loaded.steps:
        add(item)
    return steps


def _text_of(value: Any) -> Any:
    from pipeline_ex.workflow.results import (
        FailedResult,
        ForEachResult,
        LoopResult,
        NestedResult,
        ParallelResult,
        SkippedResult,
        jsonable,
    )

    if getattr(value, "done", None) is not None and hasattr(value, "text"):
        return value.text
    if isinstance(value, SkippedResult):
        return None
    if isinstance(value, FailedResult):
        return value.to_json()
    if isinstance(value, ForEachResult):
        return [{key: _text_of(child) for key, child in item.items()} for item in value.items]
    if isinstance(value, LoopResult):
        return [{key: _text_of(child) for key, child in it.items()} for it in value.iterations]
    if isinstance(value, NestedResult):
        return {key: _text_of(child) for key, child in value.steps.items()}
    if isinstance(value, ParallelResult):
        return list(value.steps)
    return jsonable(value)


def row_error(error: BaseException, *, step: str | None = None, where: str = "") -> dict[str, Any]:
    """A failed row's `error`: `{"type", "message", "step"?}`, its message redacted.

    The type is the failing step's (`provider`, `timeout`, `schema`, ... as in `Done.error`), `input` for
    inputs that do not fit the workflow, and `step` for a python step, a template or a nested input that
    failed. `where` (`rows.jsonl:17`) prefixes messages about the row's inputs.
    """
    from pipeline_ex.workflow.engine import error_info_of
    from pipeline_ex.workflow.runner import InputError

    if isinstance(error, InputError):
        message = f"{where}: {error}" if where else str(error)
        if error.missing:
            message += f'; give it in the row, e.g. {{"{error.missing}": ...}}'
        return {"type": "input", "message": redact_text(message)}
    if isinstance(error, StepError):
        info = error.done.error
        return {"type": info.type if info else "step", "message": redact_text(str(error)), "step": error.step}
    info = error_info_of(error)
    message = str(error) if isinstance(error, PipelineError) else f"{type(error).__name__}: {error}"
    payload: dict[str, Any] = {"type": info.type, "message": redact_text(message)}
    if step is not None:
        payload["step"] = step
    return payload


class _RowWatcher:
    """Sees a row's lifecycle events: its run id, its token total and the first step that failed."""

    lifecycle = True

    def __init__(self) -> None:
        self.run_id: str | None = None
        self.failed_step: str | None = None
        self.usage: Usage | None = None

    def handle_event(self, event: Any) -> None:
        """Note the first failed step and, from `RunFinished`, the run id and usage."""
        kind = event.type
        if kind == "step_finished" and event.status == "failed" and self.failed_step is None:
            self.failed_step = event.step
        elif kind == "run_finished":
            self.run_id, self.usage = event.run_id, event.usage


_FATAL = (ProviderConfigError, ProviderNotInstalledError)
"""Errors about the workflow's providers, the same for every row: they stop the batch (`pipeline-ex batch`
exits 2) rather than fail every row."""


def local_row_runner(
    loaded: LoadedWorkflow,
    *,
    mock: bool = False,
    output_dir: str | os.PathLike[str] | None = None,
    rows_file: str = "",
) -> RowRunner:
    """The default `RowRunner`: `arun` on this event loop, with the handlers the workflow configures only.

    Steps with no `stream_handler` stream nowhere (no console). A row's run raising anything but
    cancellation, or a provider that cannot be used at all (`ProviderConfigError`,
    `ProviderNotInstalledError`: they propagate and stop the batch), is a failed `RowOutcome`.

    :param rows_file: how messages name the inputs file (`rows.jsonl:17: input 'n' ...`).
    :raises PipelineError: now, when an `output_to_file` cannot be written as things are on disk.
    """
    from pipeline_ex.workflow.outputs import output_directory
    from pipeline_ex.workflow.runner import arun, check_outputs

    check_outputs(loaded, output_directory(output_dir))

    async def run_row(row: int, inputs: dict[str, Any]) -> RowOutcome:
        watcher = _RowWatcher()
        try:
            result = await arun(loaded, inputs, mock=mock, output_dir=output_dir, on_event=watcher)
        except asyncio.CancelledError:
            raise
        except _FATAL:
            raise
        except Exception as error:
            run_id = error.done.run_id if isinstance(error, StepError) else watcher.run_id
            return RowOutcome(
                "failed",
                run_id=run_id,
                error=row_error(error, step=watcher.failed_step, where=f"{rows_file}:{row}"),
                usage=_usage_json(watcher.usage),
            )
        return RowOutcome(
            "ok",
            run_id=result.run_id,
            steps=steps_text(loaded, result),
            usage=_usage_json(watcher.usage),
            outputs={step: str(path) for step, path in result.outputs.items()},
        )

    return run_row


def _usage_json(usage: Usage | None) -> dict[str, int | None] | None:
    return usage.model_dump() if usage is not None else None


# -- the batch ---------------------------------------------------------------------------------------------


class _OutputWatch:
    """Warns (once) when two rows write the same `output_to_file`, so one overwrote the other's file."""

    def __init__(self) -> None:
        self.written: dict[str, tuple[int, str]] = {}
        self.warned = False

    def note(self, row: int, outputs: Mapping[str, str]) -> None:
        """Remember the files a row wrote; warn the first time one was already written by another row."""
        for step, path in outputs.items():
            first = self.written.setdefault(path, (row, step))
            if first[0] != row and not self.warned:
                self.warned = True
                warnings.warn(
                    BatchWarning(
                        f"rows {first[0]} and {row} both wrote {path} (output_to_file of step {step!r}), so each "
                        "row overwrites the file of the one before; put an input in the file name, e.g. "
                        'output_to_file: "{{ inputs.id }}.md" (said once per batch)'
                    ),
                    stacklevel=2,
                )


async def run_batch(
    loaded: LoadedWorkflow,
    rows_path: str | os.PathLike[str],
    output_path: str | os.PathLike[str],
    *,
    concurrency: int = DEFAULT_CONCURRENCY,
    mock: bool = False,
    output_dir: str | os.PathLike[str] | None = None,
    run_row: RowRunner | None = None,
    on_progress: ProgressCallback | None = None,
) -> BatchSummary:
    """Run `loaded` once per row of `rows_path`, at most `concurrency` rows at once; append to `output_path`.

    Rows already in the output file are skipped. Each finished row is appended as one line (see the module
    docstring), in the order rows finish. When the batch is cancelled, the rows still running are cancelled
    (each started LLM step delivers its `Done(cancelled)`) and are not written, so running the batch again
    finishes them; rows already written stay.

    :param mock: run every LLM step on the mock provider (for the default runner).
    :param output_dir: where `output_to_file` writes (for the default runner), as `arun` takes it.
    :param run_row: how one row runs; `local_row_runner(loaded, ...)` by default.
    :param on_progress: told of each row written or skipped (see `ProgressCallback`).
    :raises BatchError: when the inputs file cannot be read or the output file cannot be used.
    :raises ValueError: when `concurrency` is below 1.
    """
    if concurrency < 1:
        raise ValueError(f"concurrency must be at least 1, got {concurrency}")
    rows_path, output_path = Path(rows_path), Path(output_path)
    started = time.perf_counter()
    summary = BatchSummary(rows_file=rows_path, output=output_path)
    rows_shown = os.fspath(rows_path)
    runner = run_row or local_row_runner(loaded, mock=mock, output_dir=output_dir, rows_file=rows_shown)
    rows_file, out, done = _open_files(rows_path, output_path)
    try:
        summary.earlier_failed = sum(1 for status in done.rows.values() if status == "failed")
        rows = _rows_of(rows_file, rows_shown)
        await _run_rows(rows, done.rows, runner, out, summary, concurrency, on_progress)
    finally:
        out.close()
        rows_file.close()
        summary.seconds = time.perf_counter() - started
    return summary


def _open_files(rows_path: Path, output_path: Path) -> tuple[BinaryIO, BinaryIO, _Done]:
    """Open the inputs file for reading and the output file for appending (locked), and scan the output.

    :raises BatchError: naming the file and what to do, when either cannot be used.
    """
    rows_shown = os.fspath(rows_path)
    if not rows_path.is_file():
        where = rows_shown if rows_path.is_absolute() else f"{rows_shown} (in {Path.cwd()})"
        kind = "a directory, not" if rows_path.is_dir() else "no"
        raise BatchError(f"{kind} inputs file at {where}; give a JSON Lines file, one object of inputs a line")
    if output_path.exists() and os.path.samefile(rows_path, output_path):
        raise BatchError(f"--inputs and --output are the same file ({rows_shown}); give the results their own file")
    try:
        rows_file = open(rows_path, "rb")  # noqa: SIM115 - run_batch closes it
    except OSError as error:
        raise BatchError(f"cannot read the inputs file {rows_shown}: {error.strerror or error}") from None
    try:
        out = _open_output(output_path)
    except BaseException:
        rows_file.close()
        raise
    try:
        done = _scan_output(output_path, out.fileno())
    except BaseException:
        out.close()
        rows_file.close()
        raise
    return rows_file, out, done


async def _run_rows(
    rows: Iterator[Row],
    done: Mapping[int, str],
    runner: RowRunner,
    out: BinaryIO,
    summary: BatchSummary,
    concurrency: int,
    on_progress: ProgressCallback | None,
) -> None:
    slots = asyncio.Semaphore(concurrency)
    outputs = _OutputWatch()

    def record(row: Row, outcome: RowOutcome) -> None:
        # No await between a row's outcome and its line: a cancelled batch never half-records a row.
        line = row_line(row.number, row.inputs, outcome)
        _write_line(out, _dumps(line))
        if outcome.status == "ok":
            summary.ok += 1
        else:
            summary.failed += 1
        summary._add_usage(outcome.usage)
        outputs.note(row.number, outcome.outputs)
        if on_progress is not None:
            on_progress(summary, line)

    async def run_one(row: Row) -> None:
        try:
            assert row.inputs is not None
            outcome = await runner(row.number, row.inputs)
            record(row, outcome)
        finally:
            slots.release()

    try:
        async with asyncio.TaskGroup() as group:
            for row in rows:
                if row.number in done:
                    summary.skipped += 1
                    if on_progress is not None:
                        on_progress(summary, None)
                    continue
                if row.problem is not None:
                    record(row, RowOutcome("failed", error={"type": "input", "message": redact_text(row.problem)}))
                    continue
                await slots.acquire()  # at most `concurrency` rows in flight; the rest are not read yet
                group.create_task(run_one(row))
    except BaseExceptionGroup as failures:  # a runner (or the file) raised: the rows in flight were cancelled
        raise failures.exceptions[0] from None
