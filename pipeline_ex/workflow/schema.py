"""The workflow file format, as pydantic models. `pipeline-ex schema` prints it as JSON Schema.

A workflow is a mapping under `workflow:`, the same mapping without it, or a bare list of steps (like
the migration guide's snippets). Unknown keys are errors everywhere.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, model_validator
from pydantic_core import PydanticCustomError

from pipeline_ex.llm.options import DEFAULT_MAX_TOOL_ROUNDS as DEFAULT_MAX_TOOL_ROUNDS
from pipeline_ex.llm.options import DEFAULT_SCHEMA_RETRIES as DEFAULT_SCHEMA_RETRIES
from pipeline_ex.llm.options import SamplingFields
from pipeline_ex.llm.options import StepLimits as StepLimits
from pipeline_ex.llm.providers.mock import MockReply

STEP_ID_PATTERN = r"^[A-Za-z_][A-Za-z0-9_\-]*$"
NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
HandlerRef = Annotated[str, Field(min_length=1)]
MAX_PARALLEL = 1000
"""The most step instances one group may run at once."""
MAX_ITERATIONS = 1000
"""The most iterations a loop may be given."""
OnError = Literal["fail_fast", "continue"]
Condition = str | bool
"""`when:` and `until:`: `true`/`false`, or one template expression such as `{{ 'risk' in steps.cons.text }}`."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InputSpec(_Strict):
    """A declared input. Without `default` the input is required."""

    default: Any = None
    description: str | None = None
    type: Literal["string", "integer", "number", "boolean", "list", "object"] = "string"
    """The type every value of the input has, the default included: text (`--input k=v`, a form field) is
    read as this type (JSON text for `list` and `object`), and other values must already have it (`true`
    is not an integer)."""


GenerationFields = SamplingFields
"""Sampling options accepted directly on a step (or in `defaults`), as `invoke()` takes them."""


class GeneratorSpec(_Strict):
    """Any haystack chat generator, by dotted path, built from its init parameters."""

    type: str = Field(min_length=1)
    init_parameters: dict[str, Any] = Field(default_factory=dict)
    """Secrets are written as `{env: VARIABLE}`, never inline."""


class HandlerWithOptions(_Strict):
    """A handler with its own options, as one item of a `stream_handler:` list (or on its own)."""

    handler: HandlerRef = Field(description="A short name, an Elixir alias, or a dotted path to a handler class.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description="The handler class's options, checked when the workflow loads "
        "(`pipeline-ex handlers --describe NAME` lists them).",
    )


HANDLER_SHAPE_TAGS = ("name", "with-options", "list")
"""How a `stream_handler:` value is written; pydantic puts the tag in error locations (not a key of the file)."""


def _handler_shape(value: Any) -> str | None:
    if isinstance(value, str):
        return "name"
    if isinstance(value, dict | HandlerWithOptions):
        return "with-options"
    return "list" if isinstance(value, list) else None


_SHAPE_ERROR = "expected a handler name, {handler: NAME, options: {...}}, or a list of these"
HandlerEntry = Annotated[
    Annotated[HandlerRef, Tag("name")] | Annotated[HandlerWithOptions, Tag("with-options")],
    Discriminator(_handler_shape, custom_error_type="handler_shape", custom_error_message=_SHAPE_ERROR),
]
"""One handler of `stream_handler:`: a reference, or `{handler: ..., options: {...}}`."""
StreamHandlerValue = Annotated[
    Annotated[HandlerRef, Tag("name")]
    | Annotated[HandlerWithOptions, Tag("with-options")]
    | Annotated[list[HandlerEntry], Tag("list")],
    Discriminator(_handler_shape, custom_error_type="handler_shape", custom_error_message=_SHAPE_ERROR),
]
"""`stream_handler:`: one handler entry, or a list of them."""


class StreamingFields(_Strict):
    """How a step streams, and to which handler."""

    stream: bool | None = None
    stream_handler: StreamHandlerValue | None = Field(
        default=None,
        description="One handler or a list; an item may carry its own options: "
        "`{handler: jsonl, options: {path: run.jsonl}}`.",
    )
    stream_handler_options: dict[str, Any] | None = Field(
        default=None,
        description="The options of a single stream_handler given by name; a list gives them in its items.",
    )
    async_stream: bool | None = Field(default=None, description="Deprecated: use `stream`.")
    async_handler: HandlerRef | None = Field(default=None, description="Deprecated: use `stream_handler`.")


class Defaults(GenerationFields, StepLimits, StreamingFields):
    """Values every LLM step inherits unless it sets its own."""

    provider: str | None = None
    model: str | None = None
    system: str | None = None
    options: dict[str, Any] | None = None
    """Provider options (`api_base_url`, `include_usage`, `n_ctx`, ...) for steps on the default provider."""


class Message(_Strict):
    """One message of a conversation: who says it, and what (a template)."""

    role: Literal["system", "user", "assistant"]
    content: str


MessageItem = Message | str
"""A message, or one template expression that gives a list of messages, such as a chat history from a
`list` input (`"{{ inputs.history }}"`): each a mapping with `role` and `content`, in OpenAI's chat format
(assistant `tool_calls` and `tool` messages included)."""


class DeclaredTool(_Strict):
    """A tool the model may call but the step does not run: the calls are handed back to the caller."""

    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_\-]{0,63}$")
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    """The JSON Schema of the call's arguments."""


ToolItem = str | DeclaredTool
"""A dotted path to a Python function or a haystack `Tool` (`tools.calc:evaluate`), a declared tool, or one
template expression that gives a list of declared tools (`"{{ inputs.tools }}"`, OpenAI's format too)."""


class ModelReference(_Strict):
    """A pydantic model by dotted path, whose JSON Schema the reply must match."""

    model: str = Field(min_length=1)
    """`package.module:Model` (or `package.module.Model`)."""


class LLMStep(GenerationFields, StepLimits, StreamingFields):
    """Run a prompt (or a conversation) on a provider and stream its events to the step's handler."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    type: Literal["llm"] = "llm"
    when: Condition | None = None
    """Run the step only when this holds; otherwise it is skipped (`steps.<id>.skipped`)."""
    prompt: str | None = None
    """The user message (a template). Give `prompt` or `messages`."""
    messages: list[MessageItem] | None = Field(default=None, min_length=1)
    """The conversation to send instead of `prompt`: messages with templated content, and chat histories."""
    system: str | None = None
    tools: list[ToolItem] | None = Field(default=None, min_length=1)
    """Tools the model may call; the step runs them and sends the results back, round after round."""
    max_tool_rounds: int | None = Field(default=None, ge=0, le=100)
    """The most rounds of tool calls (5 by default); a model still calling tools after them fails the step."""
    output_schema: ModelReference | dict[str, Any] | None = None
    """The reply must be JSON matching this: an inline JSON Schema, or `{model: package.module:Model}`."""
    schema_retries: int | None = Field(default=None, ge=0, le=10)
    """How many times an invalid reply is sent back with the validation errors to be fixed (1 by default)."""
    provider: str | None = None
    generator: GeneratorSpec | None = None
    """Instead of `provider`: any haystack chat generator by dotted path."""
    model: str | None = None
    options: dict[str, Any] | None = None
    """Provider options (`api_base_url`, `include_usage`, `n_ctx`, ...)."""
    output_to_file: str | None = None
    """Write the step's full text to this file, under the output directory."""
    mock_response: str | list[str] | MockReply | None = None
    """The reply (or exact chunks) the mock provider gives for this step in mock runs, or tool calls first:
    `{tool_calls: [{name: ..., arguments: {...}}], text: ...}`."""

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> LLMStep:
        if self.prompt is None and self.messages is None:
            raise PydanticCustomError(
                "conversation", "missing required key 'prompt' (or 'messages', to send a conversation)"
            )
        if self.prompt is not None and self.messages is not None:
            raise PydanticCustomError("conversation", "give either 'prompt' or 'messages', not both")
        return self


class PythonStep(_Strict):
    """Call `callable(ctx, **args)` (a dotted path) and keep what it returns as the step's value."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    type: Literal["python"]
    when: Condition | None = None
    callable: str = Field(min_length=1)
    args: dict[str, Any] = Field(default_factory=dict)


class SetStep(_Strict):
    """Set named variables (strings are templates) for later steps, as `vars.<name>`."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    type: Literal["set"]
    when: Condition | None = None
    vars: dict[str, Any]


class ParallelStep(_Strict):
    """Run the child steps at the same time; each keeps its own id (`steps.<child>`)."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    type: Literal["parallel"] = "parallel"
    when: Condition | None = None
    parallel: list[Step] = Field(min_length=1)
    on_error: OnError = "fail_fast"
    """`fail_fast` cancels the running siblings at the first failure; `continue` records it and goes on."""
    max_parallel: int | None = Field(default=None, ge=1, le=MAX_PARALLEL)
    """The most children running at once (all of them by default)."""


class ForEachStep(_Strict):
    """Run the body once per item of a list, up to `max_parallel` items at a time."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    type: Literal["for_each"] = "for_each"
    when: Condition | None = None
    for_each: str | list[Any]
    """A YAML list, or one template expression that gives a list (`{{ inputs.topics }}`)."""
    as_: str = Field(default="item", alias="as", pattern=NAME_PATTERN)
    """The name the body's templates use for the current item."""
    max_parallel: int = Field(default=1, ge=1, le=MAX_PARALLEL)
    on_error: OnError = "fail_fast"
    steps: list[Step] = Field(min_length=1)


class LoopSpec(_Strict):
    """When a loop stops: `until` holds after an iteration, or `max_iterations` have run."""

    until: Condition | None = None
    max_iterations: int = Field(ge=1, le=MAX_ITERATIONS)


class LoopStep(_Strict):
    """Run the body again and again until `loop.until` holds, at most `loop.max_iterations` times."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    type: Literal["loop"] = "loop"
    when: Condition | None = None
    loop: LoopSpec
    steps: list[Step] = Field(min_length=1)


class WorkflowStep(_Strict):
    """Run another workflow file as one step (`steps.<id>.steps.<child>`)."""

    id: str = Field(pattern=STEP_ID_PATTERN)
    type: Literal["workflow"] = "workflow"
    when: Condition | None = None
    workflow: str = Field(min_length=1)
    """The file, relative to the file that names it."""
    inputs: dict[str, Any] = Field(default_factory=dict)
    """Its inputs; strings are templates, and one `{{ expression }}` passes its value as it is (a list)."""


GROUP_KEYS = ("parallel", "for_each", "loop", "workflow")
"""The keys that make a step a group (or nested workflow) without a `type:`."""


def _step_kind(value: Any) -> str | None:
    if isinstance(value, dict):
        kind = value.get("type")
        if kind is None:
            kind = next((key for key in GROUP_KEYS if key in value), "llm")
        return kind if isinstance(kind, str) else None
    return getattr(value, "type", None)


Step = Annotated[
    Annotated[LLMStep, Tag("llm")]
    | Annotated[PythonStep, Tag("python")]
    | Annotated[SetStep, Tag("set")]
    | Annotated[ParallelStep, Tag("parallel")]
    | Annotated[ForEachStep, Tag("for_each")]
    | Annotated[LoopStep, Tag("loop")]
    | Annotated[WorkflowStep, Tag("workflow")],
    Discriminator(_step_kind, custom_error_type="step_type", custom_error_message="unknown step type"),
]
AnyStep = LLMStep | PythonStep | SetStep | ParallelStep | ForEachStep | LoopStep | WorkflowStep
STEP_MODELS: dict[str, type[BaseModel]] = {
    "llm": LLMStep,
    "python": PythonStep,
    "set": SetStep,
    "parallel": ParallelStep,
    "for_each": ForEachStep,
    "loop": LoopStep,
    "workflow": WorkflowStep,
}
STEP_LIST_FIELDS = ("steps", "parallel")
"""The keys whose value is a list of steps."""

for _model in (ParallelStep, ForEachStep, LoopStep):
    _model.model_rebuild()


def children_of(step: AnyStep) -> tuple[str, list[AnyStep]] | None:
    """The key and the list of child steps of a group step, or None for a step without children."""
    if isinstance(step, ParallelStep):
        return "parallel", step.parallel
    if isinstance(step, ForEachStep | LoopStep):
        return "steps", step.steps
    return None


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
