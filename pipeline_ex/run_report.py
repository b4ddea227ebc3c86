"""What `pipeline-ex run` prints on stderr when a run ends: hints for cut-off replies, then one total line.

`RunReport` is a run-level observer: it reads each step's `Done` and `StepFinished`, hears of every file
`output_to_file` writes (`arun(on_output=...)`), and when `RunFinished` arrives prints

- a hint for each step that stopped at its token limit (`finish_reason == "length"`), naming the limit
  and the file and line where to raise `max_tokens`;
- one total line: the run's status, its steps, its tokens, its wall time and the files it wrote, e.g.
  `run ok · 2 steps ok · tokens 74 in / 230 out · 4.1 s · wrote outputs/draft.md`.

It is printed on failure and cancellation too, naming the failure; never on stdout, which is the model's
text (or the JSON of `--json`).
"""

from __future__ import annotations

import re
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline_ex.events import Done, RunFinished, StepFinished, StepStarted, Usage
from pipeline_ex.streaming.console import is_estimated
from pipeline_ex.workflow.loader import LoadedStep, LoadedWorkflow

GROUP_KINDS = frozenset({"parallel", "for_each", "loop", "workflow"})
"""Steps that only hold other steps: the total counts the steps inside them instead."""

SHOWN_FILES = 5
"""How many written files the total line names before it says how many more there were."""

_INDEX = re.compile(r"\[\d+\]")


class RunReport:
    """Collects a run's outcome from its events and prints the length hints and the total line at its end.

    :param loaded: the workflow that runs (its file and lines are named by the hints).
    :param quiet: print the hints but not the total line (`pipeline-ex run -q`).
    """

    lifecycle = True

    def __init__(self, loaded: LoadedWorkflow, *, quiet: bool = False) -> None:
        self.loaded = loaded
        self.quiet = quiet
        self.started = time.perf_counter()
        self.kinds: dict[str, str] = {}
        self.statuses: Counter[str] = Counter()
        self.failed_step: str | None = None
        self.usages: list[tuple[Usage | None, bool]] = []
        """Each LLM step run's usage, and whether it is an estimate."""
        self.cut_short: list[Done] = []
        self.files: list[Path] = []
        self._keepers: dict[type, Callable[[Any], None]] = {
            Done: self._done,
            StepStarted: self._started,
            StepFinished: self._finished,
            RunFinished: self._run_finished,
        }

    # -- collecting ------------------------------------------------------------------------------

    def handle_event(self, event: Any) -> None:
        """Keep what the report needs from one event; print the report on `RunFinished`."""
        keep = self._keepers.get(type(event))  # one lookup: a Delta, the most frequent event, needs nothing
        if keep is not None:
            keep(event)

    def _done(self, done: Done) -> None:
        self.usages.append((done.response.usage, is_estimated(done.response)))
        if done.response.finish_reason == "length":
            self.cut_short.append(done)

    def _started(self, event: StepStarted) -> None:
        self.kinds[event.step] = event.kind

    def _finished(self, event: StepFinished) -> None:
        if self.kinds.get(event.step) not in GROUP_KINDS:
            self.statuses[event.status] += 1
            if event.status == "failed" and self.failed_step is None:
                self.failed_step = event.step

    def _run_finished(self, event: RunFinished) -> None:
        for line in self.hints():
            print(line, file=sys.stderr, flush=True)
        if not self.quiet:
            print(self.total_line(event.status), file=sys.stderr, flush=True)

    def file_written(self, step: str, file: Path) -> None:
        """Note a file a step's `output_to_file` wrote (the `on_output` callback of `arun`)."""
        if file not in self.files:
            self.files.append(file)

    # -- the total line --------------------------------------------------------------------------

    def total_line(self, status: str) -> str:
        """`run STATUS · steps · tokens · time · files written`."""
        head = f"run {status}"
        if status == "failed" and self.failed_step is not None:
            head += f" at step {self.failed_step!r}"
        parts = [head, self._steps(), self._tokens(), f"{time.perf_counter() - self.started:.1f} s"]
        if self.files:
            shown = [_shown_path(file) for file in self.files[:SHOWN_FILES]]
            more = len(self.files) - len(shown)
            parts.append("wrote " + ", ".join(shown) + (f" and {more} more" if more else ""))
        return " · ".join(parts)

    def _steps(self) -> str:
        total = sum(self.statuses.values())
        noun = "step" if total == 1 else "steps"
        if len(self.statuses) <= 1:
            return f"{total} {noun} {next(iter(self.statuses), 'run')}"
        order = ("ok", "failed", "cancelled", "skipped")
        counts = ", ".join(f"{self.statuses[s]} {s}" for s in order if self.statuses[s])
        return f"{total} {noun}: {counts}"

    def _tokens(self) -> str:
        """The tokens of the LLM steps that reported usage; `tokens unknown` when none did (never 0)."""
        reported = [(usage, estimate) for usage, estimate in self.usages if usage is not None]
        if not reported:
            return "tokens unknown"
        inputs = [usage.input_tokens for usage, _ in reported]
        outputs = [usage.output_tokens for usage, _ in reported]
        estimated = any(estimate for _, estimate in reported)
        counts = []
        if any(n is not None for n in inputs):
            counts.append(f"{sum(n or 0 for n in inputs)} in")
        if any(n is not None for n in outputs):
            counts.append(f"{'~' if estimated else ''}{sum(n or 0 for n in outputs)} out")
        text = "tokens " + " / ".join(counts)
        notes = []
        if estimated:
            notes.append("~ estimated from the streamed chunks of a step that stopped early")
        if None in inputs and any(n is not None for n in inputs):
            notes.append(f"input unknown for {inputs.count(None)} of them")
        elif None in inputs:
            notes.append("input unknown")
        unreported = len(self.usages) - len(reported)
        if unreported:
            notes.append(f"{unreported} of {len(self.usages)} LLM steps reported none")
        return text + (f" ({'; '.join(notes)})" if notes else "")

    # -- the length hints ------------------------------------------------------------------------

    def hints(self) -> list[str]:
        """One hint per step (definition) that stopped at its token limit, with where to raise it."""
        by_step: dict[str, list[Done]] = {}
        for done in self.cut_short:
            by_step.setdefault(_INDEX.sub("", done.step), []).append(done)
        return [self._hint(dones) for dones in by_step.values()]

    def _hint(self, dones: list[Done]) -> str:
        done = dones[0]
        who = f"step {done.step!r}"
        if len(dones) > 1:
            who += f" (and {len(dones) - 1} more of its runs)"
        found = _find_step(self.loaded, done.step)
        if found is None:  # not a step of this file (a step path this run does not know): no place to name
            return f"hint: {who} stopped at its max_tokens limit before the reply ended; raise max_tokens"
        workflow, item = found
        step_at = _line_of(workflow, item.path)
        key = _set_in(workflow, item)
        if key:
            place = f"raise max_tokens at {_line_of(workflow, key)}"
            if key[0] == "defaults":
                place += f" (the workflow's defaults), or set it on the step at {step_at}"
            limit = item.options.get("max_tokens")
            return f"hint: {who} stopped at its max_tokens limit ({limit}) before the reply ended; {place}"
        provider = item.provider or done.response.provider
        default = _provider_default_max_tokens(provider)
        limit_text = (
            f"the {provider} provider's default max_tokens ({default})"
            if default is not None
            else "the model's default output limit (no max_tokens is set)"
        )
        return (
            f"hint: {who} stopped at {limit_text} before the reply ended; set a higher max_tokens on the step "
            f"at {step_at}, or in the workflow's defaults:"
        )


def _shown_path(file: Path) -> str:
    """A written file, relative to the current directory when it is inside it."""
    cwd = Path.cwd()
    return str(file.relative_to(cwd)) if file.is_relative_to(cwd) else str(file)


def _find_step(loaded: LoadedWorkflow, path: str) -> tuple[LoadedWorkflow, LoadedStep] | None:
    """The workflow file and the step definition an event's step path (`sections[2].draft`) comes from.

    Step ids are unique in a file; a `workflow:` step's path goes on with the ids of its nested file.
    """
    workflow, found = loaded, None
    for part in _INDEX.sub("", path).split("."):
        if found is not None and found.nested is not None:
            workflow = found.nested
        found = next((item for item in workflow.all_steps() if item.id == part), None)
        if found is None:
            return None
    return None if found is None else (workflow, found)


def _set_in(workflow: LoadedWorkflow, item: LoadedStep) -> tuple[str | int, ...]:
    """The key path where the step's max_tokens comes from, or () when it is not set."""
    spec = item.spec
    if getattr(spec, "max_tokens", None) is not None:
        return (*item.path, "max_tokens")
    if "max_tokens" in (getattr(spec, "options", None) or {}):
        return (*item.path, "options", "max_tokens")
    defaults = workflow.workflow.defaults
    if defaults.max_tokens is not None:
        return ("defaults", "max_tokens")
    if "max_tokens" in (defaults.options or {}) and "max_tokens" in item.options:
        return ("defaults", "options", "max_tokens")
    return ()


def _line_of(workflow: LoadedWorkflow, path: tuple[str | int, ...]) -> str:
    location = workflow.location(*path, at_key=True)
    return f"{location.file}:{location.line}"


def _provider_default_max_tokens(provider: str) -> int | None:
    """The max_tokens a built-in provider sends when none is set (the local model's 256), if it has one."""
    from pipeline_ex.llm.providers import PROVIDERS, ProviderInfo

    info = PROVIDERS.get(provider)
    options = info.options if isinstance(info, ProviderInfo) else None
    field = options.model_fields.get("max_tokens") if options is not None else None
    default = field.default if field is not None else None
    return default if isinstance(default, int) else None
