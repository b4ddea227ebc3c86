"""The `pipeline-ex` command line (also `python -m pipeline_ex`).

argparse from the standard library keeps start-up fast: `--help` and `validate` never import haystack,
and each command imports only what it needs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
"""128 + SIGPIPE: the reader of stdout went away (`| head`), as other Unix tools report it."""
EXIT_TERMINATED = 143
"""128 + SIGTERM."""


def _stderr(text: object) -> None:
    """Print to stderr with every secret the process holds redacted (errors may quote a provider's key)."""
    from pipeline_ex.redaction import redact_text

    print(redact_text(str(text)), file=sys.stderr)


def _error(message: str) -> None:
    _stderr(f"error: {message}")


def _show_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    label = "deprecated" if issubclass(category, DeprecationWarning) else "warning"
    print(f"{label}: {message}", file=sys.stderr)


class _Progress:
    """Prints `[2/3] summary` on a terminal's stderr as each top-level step of a longer workflow starts."""

    lifecycle = True

    def __init__(self, step_ids: list[str]) -> None:
        self.order = {step_id: index for index, step_id in enumerate(step_ids, start=1)}
        self.shown = len(step_ids) > 1 and sys.stderr.isatty()

    def handle_event(self, event: Any) -> None:
        """Print the position of a top-level step that starts."""
        if getattr(event, "type", None) == "step_started" and event.step in self.order:
            print(f"[{self.order[event.step]}/{len(self.order)}] {event.step}", file=sys.stderr, flush=True)


class _Termination:
    """SIGTERM cancels the task that runs the command, as Ctrl-C does.

    asyncio.run turns SIGINT into a cancellation already; with this, SIGTERM does too, so every running
    step delivers its Done(cancelled) before the process exits.
    """

    def __init__(self) -> None:
        self.terminated = False

    @contextlib.contextmanager
    def cancels_this_task(self) -> Iterator[None]:
        """While inside, SIGTERM cancels the current task and sets `terminated`."""
        import asyncio
        import signal

        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def on_sigterm() -> None:
            self.terminated = True
            task.cancel()

        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # no signals here, or not main
            loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        try:
            yield
        finally:
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(signal.SIGTERM)


def _parse_inputs(pairs: Sequence[str]) -> dict[str, str]:
    inputs: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"--input expects NAME=VALUE, got {pair!r}")
        inputs[name.strip()] = value
    return inputs


def _print_json(document: dict[str, Any]) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


def _run_overrides(args: argparse.Namespace) -> Any:
    """The `--provider`, `--model` and `--set` values of `run` or `batch` (raises `OverrideError`)."""
    from pipeline_ex.workflow.overrides import RunOverrides

    return RunOverrides.from_command_line(provider=args.provider, model=args.model, settings=args.set)


def _cmd_run(args: argparse.Namespace) -> int:
    from pipeline_ex.context import new_run_id
    from pipeline_ex.errors import (
        PipelineError,
        ProviderConfigError,
        ProviderNotInstalledError,
        StepError,
        WorkflowError,
    )
    from pipeline_ex.redaction import redacting_logger
    from pipeline_ex.run_json import failure_document, success_document, unfinished_step
    from pipeline_ex.run_report import RunReport
    from pipeline_ex.streaming.resolve import resolve_handler
    from pipeline_ex.streaming.status_line import model_loads_shown_on_terminal
    from pipeline_ex.workflow.checkpoints import FileCheckpoints, ResumeError
    from pipeline_ex.workflow.loader import load_workflow
    from pipeline_ex.workflow.outputs import output_directory
    from pipeline_ex.workflow.runner import InputError, arun

    loaded: Any = None
    checkpoints: Any = None
    run_id: str | None = None
    resume_command: str | None = None

    def failed(code: int, kind: str, message: str, *, step: str | None = None, issues: Any = ()) -> int:
        """Under --json, print the failure as JSON on stdout (the message went to stderr already)."""
        if args.json:
            checkpoint = checkpoints.read(run_id) if checkpoints is not None and run_id is not None else None
            resumable = checkpoint is not None
            _print_json(
                failure_document(
                    kind,
                    message,
                    step=step or unfinished_step(checkpoint),
                    run_id=run_id,
                    workflow=loaded.name if loaded is not None else None,
                    resume=resume_command if resumable else None,
                    issues=issues,
                    checkpoint=checkpoint,
                )
            )
        return code

    try:
        inputs = _parse_inputs(args.input)
        overrides = _run_overrides(args)
        loaded = load_workflow(args.file, mock=args.mock, overrides=overrides)
        checkpoints = FileCheckpoints(output_directory(args.output_dir))
        if args.resume is not None and checkpoints.read(args.resume) is None:
            raise ResumeError(
                f"no checkpoint of run {args.resume} in {checkpoints.folder}: a run keeps one until it succeeds; "
                "pass the same --output-dir as the run had"
            )
    except ValueError as error:  # --input and --set values
        _error(str(error))
        return failed(EXIT_USAGE, "usage", str(error))
    except WorkflowError as error:
        _stderr(error)
        return failed(EXIT_USAGE, "workflow", str(error), issues=error.issues)
    except ResumeError as error:
        _error(str(error))
        return failed(EXIT_USAGE, "resume", str(error))
    run_id = args.resume or new_run_id()
    import shlex

    resume_command = f"pipeline-ex run {shlex.quote(args.file)} --resume {run_id}" + (
        f" --output-dir {shlex.quote(args.output_dir)}" if args.output_dir else ""
    )
    if overrides:
        resume_command += f" {overrides.as_arguments()}"
    resume_hint = f"continue it with: {resume_command}"
    redacting_logger("pipeline_ex.cli").info(
        "run %s of %r (%s, %d top-level step(s)); checkpoint in %s",
        run_id,
        loaded.name,
        args.file,
        len(loaded.steps),
        checkpoints.path(run_id),
    )
    progress = _Progress([step.id for step in loaded.steps])
    report = RunReport(loaded, quiet=getattr(args, "quiet", False))  # the hints and total line on stderr

    import asyncio

    console = resolve_handler("console")
    redirect = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    termination = _Termination()

    async def run_until_done_or_terminated() -> Any:
        with termination.cancels_this_task(), model_loads_shown_on_terminal():
            return await arun(
                loaded,
                inputs,
                mock=args.mock,
                output_dir=args.output_dir,
                default_handler=console,
                on_event=[progress, report] if progress.shown else report,
                run_id=run_id,
                checkpoints=checkpoints,
                resume=args.resume is not None,
                on_output=report.file_written,
            )

    try:
        with redirect:
            result = asyncio.run(run_until_done_or_terminated())
    except KeyboardInterrupt:
        _error(f"interrupted; {resume_hint}")
        return failed(EXIT_INTERRUPTED, "cancelled", "interrupted")
    except asyncio.CancelledError:
        if not termination.terminated:
            raise
        _error(f"terminated; {resume_hint}")
        return failed(EXIT_TERMINATED, "cancelled", "terminated")
    except StepError as error:
        if isinstance(error.__cause__, BrokenPipeError):  # the console handler's reader went away
            raise error.__cause__ from error
        _error(f"step {error.step!r} failed: {error}")
        _stderr(resume_hint)
        kind = error.done.error.type if error.done.error is not None else "step"
        return failed(EXIT_RUN_FAILED, kind, str(error), step=error.step)
    except ResumeError as error:
        _error(str(error))
        return failed(EXIT_USAGE, "resume", str(error))
    except InputError as error:
        how = (
            f"pass it with --input {error.missing}=VALUE"
            if error.missing
            else "inputs are given with --input NAME=VALUE"
        )
        _error(f"{error}; {how}")
        return failed(EXIT_USAGE, "input", f"{error}; {how}")
    except (WorkflowError, ProviderConfigError, ProviderNotInstalledError) as error:
        _stderr(error if isinstance(error, WorkflowError) else f"error: {error}")
        if isinstance(error, WorkflowError):
            return failed(EXIT_USAGE, "workflow", str(error), issues=error.issues)
        return failed(EXIT_USAGE, "provider", str(error))
    except PipelineError as error:
        _error(str(error))
        if checkpoints.read(run_id) is not None:
            _stderr(resume_hint)
        return failed(EXIT_RUN_FAILED, "step", str(error))
    except Exception as error:  # a python step's own error: its traceback is the user's to read
        if checkpoints.read(run_id) is not None:
            _stderr(resume_hint)
        failed(EXIT_RUN_FAILED, "step", f"{type(error).__name__}: {error}")
        raise
    if args.json:
        _print_json(success_document(result))
    return EXIT_OK


def _cmd_validate(args: argparse.Namespace) -> int:
    from pipeline_ex.errors import WorkflowError
    from pipeline_ex.workflow.loader import load_workflow

    failed = 0
    for file in args.files:
        try:
            loaded = load_workflow(file, mock=args.mock)
        except WorkflowError as error:
            _stderr(error)
            failed += 1
            continue
        print(f"{file}: ok ({len(loaded.steps)} steps)")
    return EXIT_USAGE if failed else EXIT_OK


def _cmd_migrate(args: argparse.Namespace) -> int:
    from pipeline_ex.errors import WorkflowError
    from pipeline_ex.workflow.migrate import migrate_file

    legacy_found = False
    blocked = False
    for file in args.files:
        try:
            report = migrate_file(file, write=args.write)
        except WorkflowError as error:
            _stderr(error)
            blocked = True
            continue
        for use in report.uses:
            print(use)
        for issue in report.conflicts:
            print(f"{issue}", file=sys.stderr)
        legacy_found = legacy_found or bool(report.uses or report.conflicts)
        blocked = blocked or bool(report.conflicts)
        if args.write and report.uses and not report.conflicts:
            print(report.diff, end="")
            print(f"{file}: rewrote {len(report.uses)} legacy usage(s)")
        elif not report.uses and not report.conflicts:
            print(f"{file}: no legacy usage")
    if blocked:
        return EXIT_USAGE
    if args.check and legacy_found:
        return EXIT_RUN_FAILED
    return EXIT_OK


def _cmd_batch(args: argparse.Namespace) -> int:
    import asyncio

    from pipeline_ex.batch import BatchError, BatchSummary, count_rows, run_batch
    from pipeline_ex.batch_progress import BatchDisplay
    from pipeline_ex.errors import PipelineError, WorkflowError
    from pipeline_ex.workflow.loader import load_workflow

    try:
        overrides = _run_overrides(args)
        if overrides and args.redis:
            raise ValueError(
                f"{overrides.items[0].flag}: the workers of --redis load the workflow file themselves, so "
                "--provider, --model and --set apply to rows run here only; put the values in the file's "
                "defaults, or leave out --redis"
            )
        loaded = load_workflow(args.file, mock=args.mock, overrides=overrides)
    except ValueError as error:
        _error(str(error))
        return EXIT_USAGE
    except WorkflowError as error:
        _stderr(error)
        return EXIT_USAGE
    total = None
    if sys.stderr.isatty():
        with contextlib.suppress(OSError):  # an inputs file that cannot be read is reported by run_batch
            total = count_rows(args.inputs)
    display = BatchDisplay(total)
    termination = _Termination()
    deployment: Any = None
    if args.redis:
        try:
            from pipeline_ex.distributed.batch_rows import remote_row_runner
            from pipeline_ex.distributed.deployment import Deployment

            deployment = Deployment(args.redis)
            deployment.check_reachable()
        except ImportError as error:
            _error(f"{error}; install the extra: pip install 'pipeline-ex[distributed]'")
            return EXIT_USAGE
        except PipelineError as error:
            _error(str(error))
            return EXIT_USAGE

    async def batch_until_done_or_terminated() -> BatchSummary:
        # The rows in flight when the batch is stopped are cancelled (each started step delivers its
        # Done(cancelled)) and none of them is written.
        run_row, close_remote = None, None
        if deployment is not None:
            run_row, close_remote = remote_row_runner(deployment, loaded, mock=args.mock, rows_file=args.inputs)
        try:
            with termination.cancels_this_task(), display:
                return await run_batch(
                    loaded,
                    args.inputs,
                    args.output,
                    concurrency=args.concurrency,
                    mock=args.mock,
                    output_dir=args.output_dir,
                    on_progress=display.update,
                    run_row=run_row,
                )
        finally:
            if close_remote is not None:
                await close_remote()

    def stopped(how: str) -> None:
        seen = display.summary
        written = f"{seen.ok + seen.failed} rows ({seen.failed} failed)" if seen else "no row"
        written += f" written to {args.output} by this run"
        _error(f"{how}; {written}; the rows that were running were not written: run the same command to finish")

    try:
        summary = asyncio.run(batch_until_done_or_terminated())
    except KeyboardInterrupt:
        stopped("interrupted")
        return EXIT_INTERRUPTED
    except asyncio.CancelledError:
        if not termination.terminated:
            raise
        stopped("terminated")
        return EXIT_TERMINATED
    except WorkflowError as error:
        _stderr(error)
        return EXIT_USAGE
    except (BatchError, PipelineError) as error:  # files, providers, output paths: before or for every row
        _error(str(error))
        return EXIT_USAGE
    _stderr(f"batch: {summary.describe()}")
    return EXIT_RUN_FAILED if summary.any_failed else EXIT_OK


def _cmd_handlers(args: argparse.Namespace) -> int:
    from pipeline_ex.streaming.names import BUILTINS, ELIXIR_ALIASES, LEGACY_ALIASES, handler_entry_points

    if args.describe is not None:
        from pipeline_ex.errors import HandlerResolutionError
        from pipeline_ex.streaming.describe import describe_handler

        try:
            print(describe_handler(args.describe))
        except HandlerResolutionError as error:
            _error(f"{error}\n  every name: pipeline-ex handlers")
            return EXIT_USAGE
        return EXIT_OK

    print("Built-in handlers (short name -> class):")
    for name, target in BUILTINS.items():
        print(f"  {name:<10} {target.replace(':', '.')}")
    entries = {n: ep for n, ep in handler_entry_points().items() if n not in BUILTINS}
    print("\nRegistered by installed packages (entry-point group pipeline_ex.handlers):")
    if entries:
        for name, entry in sorted(entries.items()):
            print(f"  {name:<10} {entry.value}")
    else:
        print("  (none)")
    print("\nElixir aliases from the migration guide:")
    for alias, name in ELIXIR_ALIASES.items():
        print(f"  {alias:<40} -> {name}")
    print("\nDeprecated legacy names (still run, with a warning):")
    for alias, replacement in LEGACY_ALIASES.items():
        print(f"  {alias:<40} -> {replacement}")
    return EXIT_OK


def _cmd_serve(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline_ex.errors import ExtraNotInstalledError, PipelineError
    from pipeline_ex.server import ServerConfigError, is_loopback, serve, split_hosts

    folder = Path(args.workflows)
    if not folder.is_dir():
        where = f"{folder}" if folder.is_absolute() else f"{folder} (in {Path.cwd()})"
        _error(f"no workflows folder at {where}; run from a project folder, or pass --workflows DIR")
        return EXIT_USAGE
    if not any(p.suffix in (".yaml", ".yml") and p.is_file() for p in folder.iterdir()):
        print(f"warning: {folder} has no workflow files (*.yaml, *.yml); the server will list none", file=sys.stderr)
    if not is_loopback(args.host) and not os.environ.get("PIPELINE_SERVER_API_KEY"):
        print(
            f"warning: serving on {args.host}, beyond this machine, with no API key: anyone who can reach it can "
            "run the workflows (and spend their provider credit). Set PIPELINE_SERVER_API_KEY to require a "
            "bearer token, or bind to 127.0.0.1.",
            file=sys.stderr,
        )
    allowed_hosts = None if args.allowed_hosts is None else split_hosts(args.allowed_hosts)
    try:
        serve(
            folder,
            host=args.host,
            port=args.port,
            mock=args.mock,
            allowed_hosts=allowed_hosts,
            read_timeout=args.read_timeout,
            max_runs=args.max_runs,
            log_events=args.log_events,
            log_bytes=args.log_bytes,
            max_concurrent_runs=args.max_concurrent_runs,
            keepalive=args.keepalive,
            redis=args.redis,
        )
    except ExtraNotInstalledError as error:
        _error(str(error))
        return EXIT_USAGE
    except (ServerConfigError, PipelineError) as error:  # PipelineError: a Redis that cannot be reached
        _error(str(error))
        return EXIT_USAGE
    return EXIT_OK


def _cmd_worker(args: argparse.Namespace) -> int:
    from pathlib import Path

    from pipeline_ex.errors import ExtraNotInstalledError, PipelineError

    folder = Path(args.workflows)
    if not folder.is_dir():
        _error(f"no workflows folder at {folder}; run every worker from the same project folder as the servers")
        return EXIT_USAGE
    try:
        from pipeline_ex.distributed.celery_app import run_worker
        from pipeline_ex.distributed.deployment import Deployment

        deployment = Deployment.from_env(args.redis, lease_seconds=args.lease)
        run_worker(deployment, folder, concurrency=args.concurrency, name=args.name, output_dir=args.output_dir)
    except ImportError as error:
        _error(f"{error}; install the extra: pip install 'pipeline-ex[distributed]'")
        return EXIT_USAGE
    except (ExtraNotInstalledError, PipelineError) as error:
        _error(str(error))
        return EXIT_USAGE
    return EXIT_OK


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def _cmd_completion(args: argparse.Namespace) -> int:
    from pipeline_ex.completion import completion_script

    print(completion_script(build_parser(), args.shell), end="")
    return EXIT_OK


def _add_override_arguments(parser: argparse.ArgumentParser) -> None:
    """`--provider`, `--model` and `--set KEY=VALUE`: defaults for this run (see `workflow.overrides`)."""
    parser.add_argument(
        "--provider",
        metavar="NAME",
        help="the provider of every LLM step that does not name its own (replaces defaults.provider, and the "
        "file's defaults.model and defaults.options written for another provider)",
    )
    parser.add_argument(
        "--model", metavar="NAME", help="the model of every LLM step that does not name its own (defaults.model)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="set a key of the workflow's defaults for this run, such as temperature=0.2, stream=false or "
        "options.n_ctx=4096; the value is read as YAML (repeatable)",
    )


def _cmd_schema(_: argparse.Namespace) -> int:
    from pipeline_ex.workflow.schema import json_schema

    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `pipeline-ex` and its subcommands."""
    from pipeline_ex.log_levels import SUBCOMMAND_SUFFIX, add_log_level_arguments

    parser = argparse.ArgumentParser(
        prog="pipeline-ex",
        description="Run YAML LLM workflows whose steps stream typed events (Delta, Done) to handlers.",
        epilog="Exit codes: 0 ok, 1 run failed, 2 usage or validation error, 130 interrupted (Ctrl-C), "
        "141 output pipe closed, 143 terminated (SIGTERM).",
    )
    parser.add_argument("--version", action="version", version=f"pipeline-ex {__import__('pipeline_ex').__version__}")
    add_log_level_arguments(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a workflow, streaming each step to its handlers",
        description="Run a workflow file. Steps without a stream_handler stream to the console.",
    )
    run.add_argument("file", help="the workflow YAML file")
    run.add_argument(
        "--input", "-i", action="append", default=[], metavar="NAME=VALUE", help="set an input (repeatable)"
    )
    run.add_argument("--mock", action="store_true", help="run every LLM step on the mock provider (no network)")
    run.add_argument(
        "--output-dir",
        metavar="DIR",
        help="where output_to_file writes (default: $PIPELINE_OUTPUT_DIR, then ./outputs)",
    )
    run.add_argument(
        "--json", action="store_true", help="print the results as JSON on stdout; streamed text goes to stderr"
    )
    run.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue a run that failed or was interrupted, from its checkpoint in the output folder: its "
        "finished steps are not run again (the inputs are the run's)",
    )
    _add_override_arguments(run)
    run.set_defaults(func=_cmd_run)

    validate = commands.add_parser(
        "validate",
        help="check workflow files without running them",
        description="Check schema, templates, handlers and providers of each file; exit 2 if any is invalid.",
    )
    validate.add_argument("files", nargs="+", metavar="FILE")
    validate.add_argument(
        "--mock", action="store_true", help="check for a --mock run: provider packages and API keys are not required"
    )
    validate.set_defaults(func=_cmd_validate)

    migrate = commands.add_parser(
        "migrate",
        help="find or rewrite legacy async_stream / async_handler / Pipeline.AsyncStreaming usage",
        description="--check lists every legacy usage with file:line and exits 1 if any is found; "
        "--write rewrites the files in place, keeping comments, order and quoting.",
    )
    migrate.add_argument("files", nargs="+", metavar="FILE")
    mode = migrate.add_mutually_exclusive_group(required=True)
    mode.add_argument("--check", action="store_true", help="report legacy usage; exit 1 if any is found")
    mode.add_argument("--write", action="store_true", help="rewrite the files in place and print the diff")
    migrate.set_defaults(func=_cmd_migrate)

    batch = commands.add_parser(
        "batch",
        help="run a workflow once per line of a JSON Lines file of inputs, a few at once, resumably",
        description="Run FILE once per row of --inputs (one JSON object of inputs a line) and append one JSON "
        "line per row to --output, in the order rows finish. Rows already in --output are skipped, so after "
        "a stop the same command finishes the rest. Exit 1 if --output holds a failed row.",
    )
    batch.add_argument("file", help="the workflow YAML file")
    batch.add_argument("--inputs", required=True, metavar="ROWS.jsonl", help="one JSON object of inputs per line")
    batch.add_argument("--output", required=True, metavar="RESULTS.jsonl", help="where each row's result is appended")
    batch.add_argument(
        "--concurrency", type=_positive_int, default=4, metavar="N", help="rows running at once (default 4)"
    )
    batch.add_argument("--mock", action="store_true", help="run every LLM step on the mock provider (no network)")
    batch.add_argument(
        "--output-dir",
        metavar="DIR",
        help="where output_to_file writes, for every row (default: $PIPELINE_OUTPUT_DIR, then ./outputs)",
    )
    batch.add_argument(
        "--redis",
        metavar="URL",
        help="fan the rows out to the 'pipeline-ex worker' processes on this Redis (FILE must be one of their "
        "workflow files; --concurrency bounds the rows queued at once)",
    )
    _add_override_arguments(batch)
    batch.set_defaults(func=_cmd_batch)

    handlers = commands.add_parser(
        "handlers",
        help="list the stream handlers a workflow can name",
        description="List built-in handlers, handlers registered by installed packages, and the Elixir aliases; "
        "with --describe, show one handler's options.",
    )
    handlers.add_argument(
        "--describe",
        metavar="NAME",
        help="print a handler's options with their types, defaults and descriptions (a short name, an Elixir "
        "alias or a dotted path)",
    )
    handlers.set_defaults(func=_cmd_handlers)

    serve = commands.add_parser(
        "serve",
        help="serve the workflows of a folder over HTTP (SSE, plain text, JSON, OpenAI-compatible)",
        description="Serve workflows with Starlette on uvicorn: GET /workflows, POST /workflows/NAME/run, "
        "GET /runs/ID/events, POST /v1/chat/completions, GET /v1/models, GET /healthz, GET /metrics (Prometheus), "
        "and a page at /. "
        "Requests carry inputs only; runs start only from application/json bodies, requests from other "
        "sites are refused, and only loopback Host values are accepted unless --allowed-hosts adds more. "
        "Set PIPELINE_SERVER_API_KEY to require a bearer token.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1, loopback only)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--workflows", default="workflows", metavar="DIR", help="folder of workflow files")
    serve.add_argument("--mock", action="store_true", help="run every LLM step on the mock provider")
    serve.add_argument(
        "--allowed-hosts",
        metavar="NAMES",
        help="comma-separated Host names accepted besides localhost, 127.0.0.1 and [::1] ('*.example.com' "
        "patterns, or '*' for any; default $PIPELINE_SERVER_ALLOWED_HOSTS)",
    )
    serve.add_argument(
        "--max-concurrent-runs",
        type=_positive_int,
        metavar="N",
        help="runs going at once; more get 429 with Retry-After (default 1024, at most --max-runs)",
    )
    serve.add_argument(
        "--max-runs",
        type=_positive_int,
        metavar="N",
        help="runs kept for resuming, finished or not; the oldest finished are forgotten first (default 2048)",
    )
    serve.add_argument(
        "--log-events", type=_positive_int, metavar="N", help="events kept per run for resuming (default 10000)"
    )
    serve.add_argument(
        "--log-bytes",
        type=_positive_int,
        metavar="BYTES",
        help="bytes kept per run for resuming (default 1048576); the response that started a run sees all of it",
    )
    serve.add_argument(
        "--read-timeout",
        type=_positive_float,
        metavar="SECONDS",
        help="how long a request's headers, and then its body, may take to arrive (default 10)",
    )
    serve.add_argument(
        "--redis",
        metavar="URL",
        help="enqueue runs for 'pipeline-ex worker' processes on this Redis; any replica on it streams, resumes, "
        "lists and cancels any run (default $PIPELINE_REDIS_URL; without it, runs run in this process)",
    )
    serve.add_argument(
        "--keepalive",
        type=_positive_float,
        default=2.0,
        metavar="SECONDS",
        help="idle seconds before a keepalive comment on SSE and chat streams (default 2)",
    )
    serve.set_defaults(func=_cmd_serve)

    worker = commands.add_parser(
        "worker",
        help="run workflows sent by 'serve --redis' (and 'batch --redis'): a Celery worker on Redis",
        description="A Celery worker that runs the runs servers enqueue, many at once on one event loop, "
        "writing their events to Redis for any server to stream. Run it from the same project folder as "
        "the servers: a run whose workflow file differs here is refused.",
    )
    worker.add_argument("--redis", metavar="URL", help="the deployment's Redis (default $PIPELINE_REDIS_URL)")
    worker.add_argument("--workflows", default="workflows", metavar="DIR", help="folder of workflow files")
    worker.add_argument(
        "--concurrency", type=_positive_int, default=64, metavar="N", help="runs held at once (default 64)"
    )
    worker.add_argument(
        "--lease",
        type=_positive_float,
        default=5.0,
        metavar="SECONDS",
        help="a worker silent this long loses its runs to another worker (default 5; heartbeats every third)",
    )
    worker.add_argument("--name", help="the worker's name in run records and logs (default host:pid)")
    worker.add_argument(
        "--output-dir",
        metavar="DIR",
        help="where output_to_file writes (default: $PIPELINE_OUTPUT_DIR, then ./outputs)",
    )
    worker.set_defaults(func=_cmd_worker)

    schema = commands.add_parser(
        "schema",
        help="print the JSON Schema of the workflow format",
        description="Print the JSON Schema of workflow files (for yaml-language-server and editors).",
    )
    schema.set_defaults(func=_cmd_schema)

    completion = commands.add_parser(
        "completion",
        help="print a shell completion script (bash, zsh or tcsh)",
        description="Print the completion script of pipeline-ex for a shell. Install it with, for bash: "
        "pipeline-ex completion bash > ~/.local/share/bash-completion/completions/pipeline-ex; zsh: "
        'pipeline-ex completion zsh > "${fpath[1]}/_pipeline-ex"; tcsh: pipeline-ex completion tcsh >> ~/.tcshrc',
    )
    completion.add_argument("shell", choices=("bash", "zsh", "tcsh"))  # completion.SHELLS, not imported here
    completion.set_defaults(func=_cmd_completion)

    for subcommand in commands.choices.values():  # every command, whoever adds it, takes -v and -q
        add_log_level_arguments(subcommand, suffix=SUBCOMMAND_SUFFIX)
    return parser


def _misplaced_input(args: argparse.Namespace) -> list[str]:
    """`run topic=cats FILE`: the input taken for the workflow file, when no such file exists."""
    file = getattr(args, "file", None) if args.command == "run" else None
    if isinstance(file, str) and "=" in file and not os.path.exists(file):
        return [file]
    return []


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code (0 ok, 1 run failed, 2 usage or validation error)."""
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    unexpected = _misplaced_input(args) + extras
    if unexpected:
        from pipeline_ex.cli_hints import unrecognized_message

        message = unrecognized_message(parser, args.command, unexpected)
        _stderr(message)
        if getattr(args, "json", False):
            from pipeline_ex.run_json import failure_document

            _print_json(failure_document("usage", message.partition("error: ")[2]))
        return EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    from pipeline_ex.log_levels import configure_logging, merge_log_level_arguments

    try:
        merge_log_level_arguments(args)
    except ValueError as error:
        _error(str(error))
        return EXIT_USAGE
    warnings.simplefilter("default", DeprecationWarning)
    warnings.showwarning = _show_warning
    configure_logging(args.verbose, args.quiet)
    try:
        code: int = args.func(args)
    except BrokenPipeError:  # output piped into a command that stopped reading (`| head`): exit quietly
        # Point stdout at /dev/null, so that the interpreter's final flush does not fail again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE
    except KeyboardInterrupt:  # before or after a run (while loading, say): no step is running
        _error("interrupted")
        return EXIT_INTERRUPTED
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
