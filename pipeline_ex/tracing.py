"""OpenTelemetry spans for runs, steps, LLM calls and tool calls, following the GenAI semantic conventions.

Tracing is on when the application configured an OpenTelemetry SDK: `opentelemetry.trace` is already
imported (configuring an SDK imports it) and the global tracer provider is a real one, not the API's
default proxy or no-op provider. That is decided once per run (`active_tracer`, kept on the run's
`Context`); without it nothing of OpenTelemetry is imported and each run, step and LLM call pays one
`None` check. No span is made per event: the time to the first chunk is the `Done`'s `ttft_ms`, which
the step measures anyway.

Names and attributes follow the OpenTelemetry GenAI semantic conventions as published in
open-telemetry/semantic-conventions v1.41 to v1.44 (`docs/gen-ai/gen-ai-spans.md`,
`gen-ai-agent-spans.md`; since moved to open-telemetry/semantic-conventions-genai), whose GenAI
attributes are still in development:

- the run: `invoke_workflow {workflow name}`, kind INTERNAL, `gen_ai.operation.name = "invoke_workflow"`,
  `gen_ai.workflow.name`, and the project's `pipeline_ex.run.id` and `pipeline_ex.run.status`;
- each step of any kind (the conventions have no step span): `step {path}`, kind INTERNAL, with
  `pipeline_ex.step.path`, `pipeline_ex.step.kind`, `pipeline_ex.step.attempt` and
  `pipeline_ex.step.status` (`ok|skipped|failed|cancelled`). Steps inside a `parallel`, `for_each`,
  `loop` or nested `workflow` group are children of the group's span;
- each LLM step instance: `chat {gen_ai.request.model}` (`chat` when no model is named), kind CLIENT, with
  `gen_ai.operation.name = "chat"`, `gen_ai.provider.name` (the well-known value where one applies:
  `openai`, `anthropic`, `gcp.gemini`; else the provider's own name: `ollama`, `local`, `mock`),
  `gen_ai.request.model`, `gen_ai.request.stream`, `gen_ai.request.max_tokens`, `.temperature`,
  `.top_p` (when given), `gen_ai.response.model`, `gen_ai.response.finish_reasons` (the step's
  `FinishReason`), `gen_ai.usage.input_tokens`, `gen_ai.usage.output_tokens` (when the provider reported
  them), `gen_ai.response.time_to_first_chunk` (seconds) and `pipeline_ex.step.path`. The values are
  those of the step's `Done`. A step that makes several model calls (tool rounds, schema repairs,
  retries) has one `chat` span covering them, with the step's total usage, as its `Done` has;
- each tool call the step runs: `execute_tool {gen_ai.tool.name}`, kind INTERNAL, child of the `chat` span,
  with `gen_ai.operation.name = "execute_tool"`, `gen_ai.tool.name`, `gen_ai.tool.call.id` and
  `gen_ai.tool.type = "function"`.

Errors follow the conventions' "Recording Errors": status ERROR with the message, `error.type` (the
step's `ErrorInfo.type`, such as `provider`, `truncated`, `timeout`, `cancelled`; a tool's error result is
`tool_error`; otherwise the exception's qualified class name) and an `exception` event. A cancelled run
or step is recorded the same way, with `error.type = "cancelled"`.

No prompt, reply, tool argument or tool result is put on a span: content capture is left out on purpose
(privacy). Haystack's own component spans carry content only when haystack's opt-in
`HAYSTACK_CONTENT_TRACING_ENABLED=true` is set (see `haystack_component_span`).

Context propagates by itself into the asyncio tasks that run parallel branches (they copy contextvars)
and into the worker threads of sync-only generators (`bridge.in_daemon_thread` runs its work in a copy
of the caller's context). Across the queue, `trace_carrier` gives the W3C trace context of the
submitting span, stored in the run's record, and the worker continues from it (`continued_from`).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import sys
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from opentelemetry.trace import Span, Tracer

    from pipeline_ex.events import Done

SCHEMA_URL = "https://opentelemetry.io/schemas/1.41.0"
"""The semantic conventions version whose GenAI names these spans use."""

_PROVIDER_NAMES = {"openai": "openai", "anthropic": "anthropic", "claude": "anthropic", "gemini": "gcp.gemini"}
"""Our provider names -> the conventions' well-known `gen_ai.provider.name` values."""

_REQUEST_OPTIONS = {
    "max_tokens": "gen_ai.request.max_tokens",
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
}


def active_tracer() -> Tracer | None:
    """The tracer of the configured OpenTelemetry SDK, or None when no SDK is configured (see the module docstring).

    Costs one `sys.modules` lookup when OpenTelemetry was never imported; call it once per run.
    """
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider):
        return None
    from pipeline_ex import __version__

    tracer: Tracer = provider.get_tracer("pipeline_ex", __version__, schema_url=SCHEMA_URL)
    return tracer


def provider_name(provider: str) -> str:
    """The `gen_ai.provider.name` of one of our providers."""
    return _PROVIDER_NAMES.get(provider, provider)


def record_failure(span: Span, error: BaseException, error_type: str | None = None) -> None:
    """Mark `span` as failed by `error`: status ERROR, `error.type` and an `exception` event."""
    from opentelemetry.trace import Status, StatusCode

    kind = error_type or _error_type(error)
    span.set_attribute("error.type", kind)
    span.record_exception(error, escaped=True)
    span.set_status(Status(StatusCode.ERROR, _message(error, kind)))


def _error_type(error: BaseException) -> str:
    import asyncio

    from pipeline_ex.errors import StepError

    if isinstance(error, StepError) and error.done.error is not None:
        return error.done.error.type
    if isinstance(error, asyncio.CancelledError | KeyboardInterrupt):
        return "cancelled"
    cls = type(error)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


def _message(error: BaseException, kind: str) -> str:
    if kind == "cancelled" and not str(error):
        return "cancelled"
    from pipeline_ex.redaction import redact_text

    return redact_text(str(error)[:2000])


@contextlib.contextmanager
def run_span(tracer: Tracer, workflow: str, run_id: str) -> Iterator[Span]:
    """The span of one run, current while it runs; its status says how the run ended."""
    attributes = {
        "gen_ai.operation.name": "invoke_workflow",
        "gen_ai.workflow.name": workflow,
        "pipeline_ex.run.id": run_id,
    }
    with _span(tracer, f"invoke_workflow {workflow}", attributes, "pipeline_ex.run.status") as span:
        yield span


@contextlib.contextmanager
def step_span(tracer: Tracer, path: str, kind: str, attempt: int) -> Iterator[Span]:
    """The span of one step of any kind, current while it runs (a group's children become its children)."""
    attributes = {"pipeline_ex.step.path": path, "pipeline_ex.step.kind": kind, "pipeline_ex.step.attempt": attempt}
    with _span(tracer, f"step {path}", attributes, "pipeline_ex.step.status") as span:
        yield span


@contextlib.contextmanager
def _span(tracer: Tracer, name: str, attributes: Mapping[str, Any], status_key: str) -> Iterator[Span]:
    """A span whose `status_key` starts as `ok` and becomes `failed` or `cancelled` when its block raises.

    The block may set `status_key` itself (a skipped step) and record a failure it does not raise.
    """
    with tracer.start_as_current_span(
        name, attributes={**attributes, status_key: "ok"}, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as error:
            kind = _error_type(error)
            span.set_attribute(status_key, "cancelled" if kind == "cancelled" else "failed")
            record_failure(span, error, kind)
            raise


@contextlib.contextmanager
def chat_span(
    tracer: Tracer, *, step: str, provider: str, model: str | None, stream: bool, options: Mapping[str, Any]
) -> Iterator[Span]:
    """The CLIENT span of one LLM step instance, current while it runs; `finish_chat` fills in its outcome."""
    from opentelemetry.trace import SpanKind

    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": provider_name(provider),
        "gen_ai.request.stream": stream,
        "pipeline_ex.step.path": step,
    }
    if model:
        attributes["gen_ai.request.model"] = model
    for option, key in _REQUEST_OPTIONS.items():
        value = options.get(option)
        if isinstance(value, int | float) and not isinstance(value, bool):
            attributes[key] = value
    name = f"chat {model}" if model else "chat"
    with tracer.start_as_current_span(
        name, kind=SpanKind.CLIENT, attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        yield span


def finish_chat(span: Span, done: Done | None, error: BaseException | None) -> None:
    """Put the step's outcome on its `chat` span: response model, finish reason, usage, TTFT, error."""
    if done is not None:
        response = done.response
        if response.model:
            span.set_attribute("gen_ai.response.model", response.model)
        span.set_attribute("gen_ai.response.finish_reasons", [response.finish_reason])
        usage = response.usage
        if usage is not None:
            if usage.input_tokens is not None:
                span.set_attribute("gen_ai.usage.input_tokens", usage.input_tokens)
            if usage.output_tokens is not None:
                span.set_attribute("gen_ai.usage.output_tokens", usage.output_tokens)
        if done.ttft_ms is not None:
            span.set_attribute("gen_ai.response.time_to_first_chunk", done.ttft_ms / 1000)
    if error is not None:
        kind = done.error.type if done is not None and done.error is not None else None
        record_failure(span, error, kind)


@contextlib.contextmanager
def tool_span(tracer: Tracer, name: str, call_id: str) -> Iterator[Span]:
    """The span of one tool call the step runs; `finish_tool` marks an error result."""
    attributes = {
        "gen_ai.operation.name": "execute_tool",
        "gen_ai.tool.name": name,
        "gen_ai.tool.call.id": call_id,
        "gen_ai.tool.type": "function",
    }
    with tracer.start_as_current_span(
        f"execute_tool {name}", attributes=attributes, record_exception=False, set_status_on_exception=False
    ) as span:
        try:
            yield span
        except BaseException as error:
            record_failure(span, error)
            raise


def finish_tool(span: Span, failed: bool, result: str | None) -> None:
    """Mark a tool call that gave an error result (the model sees it; the step goes on)."""
    if failed:
        from opentelemetry.trace import Status, StatusCode

        span.set_attribute("error.type", "tool_error")
        span.set_status(Status(StatusCode.ERROR, (result or "")[:200]))


@functools.cache
def _haystack_tracing() -> Any:
    """Haystack's tracer module, looked up once.

    `from haystack.tracing.tracer import ...` costs microseconds each time, because the package's `tracer`
    attribute is the tracer object, not the module.
    """
    return importlib.import_module("haystack.tracing.tracer")


def haystack_tracing_enabled() -> bool:
    """Whether haystack's own tracing is on (`haystack.tracing.enable_tracing`); decided once per step run."""
    enabled: bool = _haystack_tracing().is_tracing_enabled()
    return enabled


def haystack_component_span(generator: Any, inputs: Mapping[str, Any]) -> contextlib.AbstractContextManager[Any]:
    """Haystack's own `haystack.component.run` span around a generator call, as haystack's `Pipeline` opens it.

    The step calls its chat generator directly, not through a `Pipeline`, so haystack's tracer would
    never see the call. When haystack tracing is enabled (`haystack.tracing.enable_tracing`, for instance
    with the `opentelemetry-haystack` integration's `OpenTelemetryTracer`), the step opens the span
    `Pipeline` would, with the same tags, under the current span (the step's `chat` span). Haystack
    records the inputs and outputs (the dict this yields, which the caller fills with the generator's
    output) only under its opt-in `HAYSTACK_CONTENT_TRACING_ENABLED=true`.
    """
    return _haystack_span(_haystack_tracing().tracer, generator, inputs)


@contextlib.contextmanager
def _haystack_span(tracer: Any, generator: Any, inputs: Mapping[str, Any]) -> Iterator[Any]:
    from haystack.core.serialization import generate_qualified_class_name

    cls = type(generator)
    tags = {
        "haystack.component.name": "chat_generator",
        "haystack.component.type": cls.__name__,
        "haystack.component.fully_qualified_type": generate_qualified_class_name(cls),
        "haystack.component.input_types": {k: type(v).__name__ for k, v in inputs.items()},
    }
    with tracer.trace("haystack.component.run", tags=tags) as span:
        span.set_content_tag("haystack.component.input", dict(inputs))
        output: dict[str, Any] = {}
        yield output
        span.set_tag("haystack.component.visits", 1)
        span.set_content_tag("haystack.component.output", output)


def trace_carrier() -> dict[str, str]:
    """The W3C trace context (`traceparent`, `tracestate`) of the current span, for a run sent to a worker.

    Empty when tracing is off or no span is current.
    """
    if active_tracer() is None:
        return {}
    from opentelemetry import propagate

    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return carrier


@contextlib.contextmanager
def continued_from(carrier: Mapping[str, str] | None) -> Iterator[None]:
    """Make the span `carrier` describes the current parent for the block (a worker continuing a run)."""
    if not carrier or active_tracer() is None:
        yield
        return
    from opentelemetry import context, propagate

    token = context.attach(propagate.extract(dict(carrier)))
    try:
        yield
    finally:
        context.detach(token)
