"""The workflow file format, as pydantic models. `pipeline-ex schema` prints it as JSON Schema.

A workflow is a mapping under `workflow:`, the same mapping without it, or a bare list of steps (like
the migration guide's snippets). Unknown keys are errors everywhere.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"
HandlerRef = Annotated[str, Field(min_length=1)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    """A declared input. Without `default` the input is required."""

    default: Any = None
    description: str | None = None
    type: Literal["string", "integer", "number", "boolean"] = "string"
    """The type every value of the input has, the default included: text (`--input k=v`, a form field) is
    read as this type, and other values must already have it (`true` is not an integer)."""


class GenerationFields(_Strict):
    """Sampling options accepted directly on a step (or in `defaults`)."""

    temperature: float | None = None
    max_tokens: int | None = Field(default=None, gt=0)
    top_p: float | None = None
    stop: list[str] | None = None
    seed: int | None = None


class StepLimits(_Strict):
    """Time limits and failure policy of an LLM step."""

    timeout: float | None = Field(default=None, gt=0)
    """Seconds the whole step may take, retries included."""
    chunk_timeout: float | None = Field(default=None, gt=0)
    """The longest wait, in seconds, for the first chunk and between chunks."""
    retries: int | None = Field(default=None, ge=0)
    """Extra attempts for failures before the first Delta (never after: that would repeat output)."""
    on_handler_error: Literal["raise", "log"] | None = None
    """`raise` (default) stops the stream and fails the step; `log` logs once per handler and goes on."""


class GeneratorSpec(_Strict):
    """Any haystack chat generator, by dotted path, built from its init parameters."""

    type: str = Field(min_length=1)
    init_parameters: dict[str, Any] = Field(default_factory=dict)
    """Secrets are written as `{env: VARIABLE}`, never inline."""


class StreamingFields(_Strict):
    """How a step streams, and to which handler."""

    stream: bool | None = None
    stream_handler: HandlerRef | list[HandlerRef] | None = None
    stream_handler_options: dict[str, Any] | None = None
    async_stream: bool | None = Field(default=None, description="Deprecated: use `stream`.")
    async_handler: HandlerRef | None = Field(default=None, description="Deprecated: use `stream_handler`.")


class Defaults(GenerationFields, StepLimits, StreamingFields):
    """Values every LLM step inherits unless it sets its own."""

    provider: str | None = None
    model: str | None = None
    system: str | None = None
    options: dict[str, Any] | None = None
    """Provider options (`api_base_url`, `include_usage`, `n_ctx`, ...) for steps on the default provider."""


class LLMStep(GenerationFields, StepLimits, StreamingFields):
    """Run a prompt on a provider and stream its events to the step's handler."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    type: Literal["llm"] = "llm"
    prompt: str
    system: str | None = None
    provider: str | None = None
    generator: GeneratorSpec | None = None
    """Instead of `provider`: any haystack chat generator by dotted path."""
    model: str | None = None
    options: dict[str, Any] | None = None
    """Provider options (`api_base_url`, `include_usage`, `n_ctx`, ...)."""
    output_to_file: str | None = None
    """Write the step's full text to this file, under the output directory."""
    mock_response: str | list[str] | None = None
    """The reply (or exact chunks) the mock provider gives for this step in mock runs."""


class PythonStep(_Strict):
    """Call `callable(ctx, **args)` (a dotted path) and keep what it returns as the step's value."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    type: Literal["python"]
    callable: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)


class SetStep(_Strict):
    """Set named variables (strings are templates) for later steps, as `vars.<name>`."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    type: Literal["set"]
    vars: dict[str, Any]


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type", "llm")
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


Step = Annotated[
    Annotated[LLMStep, Tag("llm")] | Annotated[PythonStep, Tag("python")] | Annotated[SetStep, Tag("set")],
    Discriminator(_step_kind, custom_error_type="step_type", custom_error_message="unknown step type"),
]
STEP_MODELS: dict[str, type[BaseModel]] = {"llm": LLMStep, "python": PythonStep, "set": SetStep}


class Workflow(_Strict):
    """A named list of steps with declared inputs and step defaults."""

    name: str
    description: str | None = None
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    defaults: Defaults = Field(default_factory=Defaults)
    steps: list[Step] = Field(min_length=1)


class WorkflowFile(_Strict):
    """The top level of a workflow file."""

    workflow: Workflow


SCHEMA_ID = "urn:pipeline-ex:workflow"
"""The `$id` of the published schema (a name, not a download address: `pipeline-ex schema` prints it)."""

WorkflowDocument = WorkflowFile | Workflow | Annotated[list[Step], Field(min_length=1)]
"""What a workflow file may hold: `workflow:` and the workflow, the workflow itself, or a bare list of steps."""


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a workflow file in any of its three shapes, for editors and yaml-language-server."""
    schema = TypeAdapter(WorkflowDocument).json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "pipeline_ex workflow",
        "description": "A workflow under `workflow:`, the workflow mapping itself, or a bare list of steps.",
        **schema,
    }
