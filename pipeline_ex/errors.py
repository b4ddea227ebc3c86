"""The exceptions pipeline_ex raises. Every one derives from `PipelineError`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipeline_ex.redaction import redact_text

if TYPE_CHECKING:
    from pipeline_ex.events import Done


class PipelineError(Exception):
    """Base class of every error pipeline_ex raises on purpose."""


@dataclass(frozen=True)
class Location:
    """Where in a workflow file a value came from: file, 1-based line and column, and the key path."""

    file: str | None = None
    line: int | None = None
    column: int | None = None
    key: str | None = None

    def __str__(self) -> str:
        place = self.file or "<python>"
        if self.line is not None:
            place += f":{self.line}"
            if self.column is not None:
                place += f":{self.column}"
        return f"{place}, key '{self.key}'" if self.key else place


class HandlerResolutionError(PipelineError):
    """A `stream_handler` reference (or `on_event` object) could not be turned into a handler."""

    def __init__(
        self,
        reference: str,
        problem: str,
        *,
        cause: BaseException | None = None,
        short_names: Sequence[str] = (),
        hint: str | None = None,
        location: Location | None = None,
        about_options: bool = False,
        option_problems: Sequence[tuple[str | None, str]] = (),
    ) -> None:
        self.reference = reference
        self.about_options = about_options
        """The reference resolved, but the options given for it are invalid."""
        self.option_problems = tuple(option_problems)
        """Each invalid option as (its top-level key, or None for a check across options; the problem)."""
        self.problem = problem
        self.cause = cause
        self.short_names = tuple(short_names)
        self.hint = hint
        self.location = location
        super().__init__(self._render())

    def _render(self) -> str:
        text = self.describe()
        if self.location is not None:
            head, _, rest = text.partition("\n")
            return f"{head}\n  at: {self.location}" + (f"\n{rest}" if rest else "")
        return text

    def describe(self) -> str:
        """The message without the location: the reference, the problem, the cause, names and hint."""
        lines = [f"cannot use stream handler {self.reference!r}: {self.problem}"]
        if self.cause is not None:
            lines.append(f"  cause: {type(self.cause).__name__}: {self.cause}")
        if self.short_names:
            lines.append(f"  short names: {', '.join(self.short_names)}")
        if self.hint:
            lines.append(f"  hint: {self.hint}")
        return "\n".join(lines)


class ExtraNotInstalledError(PipelineError):
    """A feature needs a package from one of pipeline-ex's extras, and it is not installed."""

    def __init__(self, feature: str, extra: str, missing: str) -> None:
        self.extra = extra
        self.missing = missing
        super().__init__(
            f"{feature} needs the {missing!r} package, which is not installed; fix: pip install 'pipeline-ex[{extra}]'"
        )


class ProviderNotInstalledError(ExtraNotInstalledError):
    """The integration package a provider needs is not installed."""

    def __init__(self, provider: str, extra: str, missing: str) -> None:
        self.provider = provider
        super().__init__(f"provider {provider!r}", extra, missing)


class ProviderConfigError(PipelineError):
    """A provider name or option is not valid."""


class RunCancelled(PipelineError):
    """A run being followed as an event stream was cancelled (by its server, or `EventStream.cancel()`)."""


class RemoteRunError(PipelineError):
    """A run that failed on a worker: `payload` is what clients are told about it (as `error_payload()` gives)."""

    def __init__(self, payload: dict[str, Any]) -> None:
        self.payload = dict(payload)
        super().__init__(str(payload.get("message", "the run failed")))


class StepError(PipelineError):
    """A step ended with an error. Its `Done` event was delivered before this was raised."""

    def __init__(self, message: str, *, step: str, done: Done) -> None:
        self.step = step
        self.done = done
        super().__init__(redact_text(message))  # a provider's error text may echo its key

    @property
    def partial_text(self) -> str:
        """The text delivered before the step failed."""
        return self.done.response.text


class ProviderError(StepError):
    """The provider (or the haystack generator talking to it) raised during the step."""


class StepTimeoutError(StepError):
    """The step exceeded its `timeout`, or waited longer than `chunk_timeout` for a chunk."""


class StreamTruncatedError(StepError):
    """The provider stream ended without a finish reason, so the reply is incomplete."""


class ToolRoundsError(StepError):
    """The model still called tools after the step's `max_tool_rounds` rounds."""


class StructuredOutputError(StepError):
    """The reply did not match the step's `output_schema`, also after `schema_retries` repair attempts."""


class HandlerError(StepError):
    """A stream handler raised while receiving the step's events."""

    def __init__(self, message: str, *, step: str, done: Done, handler: str) -> None:
        self.handler = handler
        super().__init__(message, step=step, done=done)


@dataclass(frozen=True)
class Issue:
    """One problem found in a workflow file, with where it is."""

    location: Location
    message: str

    def __str__(self) -> str:
        place = self.location.file or "<workflow>"
        if self.location.line is not None:
            place += f":{self.location.line}"
            if self.location.column is not None:
                place += f":{self.location.column}"
        key = f" {self.location.key}:" if self.location.key else ""
        return f"{place}:{key} {self.message}"


class WorkflowError(PipelineError):
    """A workflow file is not valid. Each issue names the file, line, column, key path and the fix."""

    def __init__(self, issues: Sequence[Issue]) -> None:
        self.issues = tuple(issues)
        super().__init__("\n".join(str(issue) for issue in self.issues))
