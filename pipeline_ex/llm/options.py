"""The step options both a workflow file and `invoke()` accept: sampling fields and step limits.

One pydantic declaration of each, with one set of constraints: the workflow schema (`pipeline-ex
schema`), the providers' option models and `StepPolicy.take_from` all use these. The module imports no
haystack, so loading or validating a workflow stays light.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

OnHandlerError = Literal["raise", "log"]


class SamplingFields(BaseModel):
    """Sampling options most providers share, accepted on a step, in `defaults` and by `invoke()`."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None


class StepLimits(BaseModel):
    """Time limits and failure policy of an LLM step."""

    model_config = ConfigDict(extra="forbid")

    timeout: float | None = Field(default=None, gt=0)
    """Seconds the whole step may take, retries included."""
    chunk_timeout: float | None = Field(default=None, gt=0)
    """The longest wait, in seconds, for the first chunk and between chunks."""
    retries: int | None = Field(default=None, ge=0)
    """Extra attempts for failures before the first Delta (never after: that would repeat output)."""
    on_handler_error: OnHandlerError | None = None
    """`raise` (default) stops the stream and fails the step; `log` logs once per handler and goes on."""


STEP_OPTION_NAMES = tuple(StepLimits.model_fields)
"""The options that belong to the step itself, not to its provider."""

LIMIT_EXPECTATIONS = {
    "timeout": "a positive number of seconds",
    "chunk_timeout": "a positive number of seconds",
    "retries": "a whole number of 0 or more",
    "on_handler_error": "'raise' or 'log'",
}
"""What each step limit must be, in words, for the error that names a bad value."""


DEFAULT_MAX_TOOL_ROUNDS = 5
"""How many tool rounds a step runs at most, unless it sets `max_tool_rounds`."""
DEFAULT_SCHEMA_RETRIES = 1
"""How many times an invalid structured reply is sent back to be fixed, unless a step sets `schema_retries`."""
