"""What clients are shown of a run's events: errors redacted, paths scrubbed, unexpected failures hidden.

Used by the server's in-memory run logs and by the workers that write runs' events to Redis, so both
show the same thing. An unexpected failure (not one of pipeline_ex's own errors) is logged with a new
reference id, and the event then names only that reference.
"""

from __future__ import annotations

import os
import re
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline_ex.errors import PipelineError
from pipeline_ex.events import ErrorInfo, RunEvent, RunFinished, StepFinished
from pipeline_ex.redaction import redact_text, redacting_logger
from pipeline_ex.sse import error_payload

logger = redacting_logger("pipeline_ex.server")  # failures may quote a secret the process holds
_ABSOLUTE_PATH = re.compile(r"(?<![\w:/.~-])/(?:[^\s/'\"():,]+/)+([^\s/'\"():,]+)")


def new_reference() -> str:
    """A reference id for a failure, shown to the client and written to the server log."""
    return uuid.uuid4().hex[:12]


def _is_pipeline_error(qualified_name: str | None) -> bool:
    """Whether an `ErrorInfo.exception` names one of pipeline_ex's own errors (whose messages clients may see)."""
    module, _, name = (qualified_name or "").rpartition(".")
    if not module.startswith("pipeline_ex"):
        return False
    found = getattr(sys.modules.get(module), name, None)
    return isinstance(found, type) and issubclass(found, PipelineError)


class PublicEvents:
    """Makes a run's events fit for clients (see the module docstring).

    :param scrub: rewrites the server's paths in error messages.
    """

    def __init__(self, run_id: str, scrub: Callable[[str], str] | None = None, workflow: str = "") -> None:
        self.run_id = run_id
        self.scrub = scrub
        self.workflow = workflow
        """The name of the workflow the run is of (for log lines)."""
        self.reference: str | None = None
        """The reference the run's own unexpected failure was logged with (set by its `RunFinished`)."""
        self._hidden: dict[tuple[str, str | None], str] = {}
        """The reference each unexpected failure seen in this run's events was logged with."""

    def public(self, event: RunEvent) -> RunEvent:
        """The event as clients may see it: its error redacted and scrubbed, or hidden behind a reference.

        An error that is not one of pipeline_ex's own (a python step raising `TypeError`, say) is logged
        here with a new reference, which the event's message then names; the run's own failure reuses it.
        """
        error = getattr(event, "error", None)
        if not isinstance(error, ErrorInfo):  # none, or a ToolResult's flag
            return event
        if error.type == "step" and not _is_pipeline_error(error.exception):
            key = (error.message, error.exception)
            reference = self._hidden.get(key)
            if reference is None:
                reference = self._hidden[key] = new_reference()
                if isinstance(event, StepFinished):
                    extra = {"reference": reference, "run_id": self.run_id, "workflow": self.workflow}
                    logger.warning(
                        "step %r of run %s failed unexpectedly (reference %s): %s: %s",
                        event.step,
                        self.run_id,
                        reference,
                        error.exception,
                        error.message,
                        extra=extra,
                    )
            if isinstance(event, RunFinished):
                self.reference = reference  # the run's failure is logged (with its traceback) under it too
            what = "run" if isinstance(event, RunFinished) else "step"
            shown = ErrorInfo(type="step", message=f"the {what} failed; see the server log (reference {reference})")
        else:
            message = redact_text(error.message)
            if self.scrub is not None:
                message = self.scrub(message)
            if message == error.message:
                return event
            shown = error.model_copy(update={"message": message})
        return event.model_copy(update={"error": shown})


class PathScrubber:
    """Rewrites the server's absolute paths in client-visible text.

    Paths in the workflows folder become relative to it; any other absolute path is cut to its file name.
    """

    def __init__(self, folder: Path) -> None:
        roots = {str(folder), str(folder.absolute()), str(folder.resolve())}
        self._roots = sorted((root.rstrip(os.sep) for root in roots if os.path.isabs(root)), key=len, reverse=True)

    def text(self, text: str) -> str:
        """`text` with the workflows folder's own paths made relative and any other absolute path cut to its name."""
        for root in self._roots:
            text = text.replace(root + os.sep, "").replace(root, ".")
        return _ABSOLUTE_PATH.sub(r"\1", text)

    def payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A copy of an error payload with every string value scrubbed."""
        return {key: self.text(value) if isinstance(value, str) else value for key, value in payload.items()}


def failure_payload(error: BaseException, scrub: PathScrubber, reference: str | None = None) -> dict[str, Any]:
    """What a client is told about a failed run: `error_payload()`, paths scrubbed, with its reference."""
    payload = scrub.payload(error_payload(error))
    if reference is not None:
        payload["reference"] = reference
        if payload.get("type") == "internal":
            payload["message"] = f"{payload['message']} (reference {reference})"
    return payload
