"""pipeline_ex: YAML LLM workflows whose steps stream typed events (`Delta`, `Done`) to pluggable handlers.

Every public name is importable from here. They load on first use, so `import pipeline_ex` (and the
`pipeline-ex` command's start-up) stays fast and haystack is imported only when a step runs.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline_ex import llm
    from pipeline_ex.context import Context
    from pipeline_ex.errors import (
        HandlerError,
        HandlerResolutionError,
        PipelineError,
        ProviderConfigError,
        ProviderError,
        ProviderNotInstalledError,
        StepError,
        StepTimeoutError,
        StreamTruncatedError,
        StructuredOutputError,
        ToolRoundsError,
        WorkflowError,
    )
    from pipeline_ex.events import (
        Delta,
        Done,
        ErrorInfo,
        Event,
        FinishReason,
        LifecycleEvent,
        Partial,
        Response,
        RunEvent,
        RunFinished,
        StepEvent,
        StepFinished,
        StepStarted,
        ToolCall,
        ToolCallInfo,
        ToolResult,
        Usage,
    )
    from pipeline_ex.llm import StepResult, ainvoke, invoke
    from pipeline_ex.streaming import (
        BufferHandler,
        CallbackHandler,
        ConsoleHandler,
        FileHandler,
        JsonlFileHandler,
        NullHandler,
        StreamHandler,
        WebhookDeliveryError,
        WebhookHandler,
        legacy_handler,
        resolve_handler,
    )
    from pipeline_ex.testing import StreamingRecorder
    from pipeline_ex.workflow import (
        Checkpoint,
        CheckpointStore,
        EventStream,
        FailedResult,
        FileCheckpoints,
        ForEachResult,
        LoadedWorkflow,
        LoopResult,
        NestedResult,
        ParallelResult,
        ResumeError,
        RunOverrides,
        RunResult,
        SkippedResult,
        arun,
        astream,
        load_workflow,
        run,
        stream,
    )

__version__ = "0.1.0"

_LAZY: dict[str, tuple[str, str | None]] = {
    "llm": ("pipeline_ex.llm", None),
    "Context": ("pipeline_ex.context", "Context"),
    "HandlerError": ("pipeline_ex.errors", "HandlerError"),
    "HandlerResolutionError": ("pipeline_ex.errors", "HandlerResolutionError"),
    "PipelineError": ("pipeline_ex.errors", "PipelineError"),
    "ProviderConfigError": ("pipeline_ex.errors", "ProviderConfigError"),
    "ProviderError": ("pipeline_ex.errors", "ProviderError"),
    "ProviderNotInstalledError": ("pipeline_ex.errors", "ProviderNotInstalledError"),
    "StepError": ("pipeline_ex.errors", "StepError"),
    "StepTimeoutError": ("pipeline_ex.errors", "StepTimeoutError"),
    "StreamTruncatedError": ("pipeline_ex.errors", "StreamTruncatedError"),
    "WorkflowError": ("pipeline_ex.errors", "WorkflowError"),
    "ToolRoundsError": ("pipeline_ex.errors", "ToolRoundsError"),
    "StructuredOutputError": ("pipeline_ex.errors", "StructuredOutputError"),
    "Delta": ("pipeline_ex.events", "Delta"),
    "Done": ("pipeline_ex.events", "Done"),
    "ErrorInfo": ("pipeline_ex.events", "ErrorInfo"),
    "Event": ("pipeline_ex.events", "Event"),
    "FinishReason": ("pipeline_ex.events", "FinishReason"),
    "Response": ("pipeline_ex.events", "Response"),
    "Usage": ("pipeline_ex.events", "Usage"),
    "StepStarted": ("pipeline_ex.events", "StepStarted"),
    "StepFinished": ("pipeline_ex.events", "StepFinished"),
    "RunFinished": ("pipeline_ex.events", "RunFinished"),
    "LifecycleEvent": ("pipeline_ex.events", "LifecycleEvent"),
    "RunEvent": ("pipeline_ex.events", "RunEvent"),
    "ToolCall": ("pipeline_ex.events", "ToolCall"),
    "ToolResult": ("pipeline_ex.events", "ToolResult"),
    "Partial": ("pipeline_ex.events", "Partial"),
    "ToolCallInfo": ("pipeline_ex.events", "ToolCallInfo"),
    "StepEvent": ("pipeline_ex.events", "StepEvent"),
    "BufferHandler": ("pipeline_ex.streaming", "BufferHandler"),
    "CallbackHandler": ("pipeline_ex.streaming", "CallbackHandler"),
    "ConsoleHandler": ("pipeline_ex.streaming", "ConsoleHandler"),
    "FileHandler": ("pipeline_ex.streaming", "FileHandler"),
    "JsonlFileHandler": ("pipeline_ex.streaming", "JsonlFileHandler"),
    "NullHandler": ("pipeline_ex.streaming", "NullHandler"),
    "StreamHandler": ("pipeline_ex.streaming", "StreamHandler"),
    "WebhookDeliveryError": ("pipeline_ex.streaming", "WebhookDeliveryError"),
    "WebhookHandler": ("pipeline_ex.streaming", "WebhookHandler"),
    "legacy_handler": ("pipeline_ex.streaming", "legacy_handler"),
    "resolve_handler": ("pipeline_ex.streaming", "resolve_handler"),
    "StreamingRecorder": ("pipeline_ex.testing", "StreamingRecorder"),
    "StepResult": ("pipeline_ex.llm", "StepResult"),
    "ainvoke": ("pipeline_ex.llm", "ainvoke"),
    "invoke": ("pipeline_ex.llm", "invoke"),
    "LoadedWorkflow": ("pipeline_ex.workflow", "LoadedWorkflow"),
    "RunResult": ("pipeline_ex.workflow", "RunResult"),
    "arun": ("pipeline_ex.workflow", "arun"),
    "load_workflow": ("pipeline_ex.workflow", "load_workflow"),
    "run": ("pipeline_ex.workflow", "run"),
    "stream": ("pipeline_ex.workflow", "stream"),
    "astream": ("pipeline_ex.workflow", "astream"),
    "EventStream": ("pipeline_ex.workflow", "EventStream"),
    "Checkpoint": ("pipeline_ex.workflow", "Checkpoint"),
    "CheckpointStore": ("pipeline_ex.workflow", "CheckpointStore"),
    "FileCheckpoints": ("pipeline_ex.workflow", "FileCheckpoints"),
    "ResumeError": ("pipeline_ex.workflow", "ResumeError"),
    "RunOverrides": ("pipeline_ex.workflow", "RunOverrides"),
    "FailedResult": ("pipeline_ex.workflow", "FailedResult"),
    "ForEachResult": ("pipeline_ex.workflow", "ForEachResult"),
    "LoopResult": ("pipeline_ex.workflow", "LoopResult"),
    "NestedResult": ("pipeline_ex.workflow", "NestedResult"),
    "ParallelResult": ("pipeline_ex.workflow", "ParallelResult"),
    "SkippedResult": ("pipeline_ex.workflow", "SkippedResult"),
}


def __getattr__(name: str) -> Any:
    """Load a public name on first access."""
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'pipeline_ex' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "BufferHandler",
    "CallbackHandler",
    "Checkpoint",
    "CheckpointStore",
    "ConsoleHandler",
    "Context",
    "Delta",
    "Done",
    "ErrorInfo",
    "Event",
    "EventStream",
    "FailedResult",
    "FileCheckpoints",
    "FileHandler",
    "FinishReason",
    "ForEachResult",
    "HandlerError",
    "HandlerResolutionError",
    "JsonlFileHandler",
    "LifecycleEvent",
    "LoadedWorkflow",
    "LoopResult",
    "NestedResult",
    "NullHandler",
    "ParallelResult",
    "Partial",
    "PipelineError",
    "ProviderConfigError",
    "ProviderError",
    "ProviderNotInstalledError",
    "Response",
    "ResumeError",
    "RunEvent",
    "RunFinished",
    "RunOverrides",
    "RunResult",
    "SkippedResult",
    "StepError",
    "StepEvent",
    "StepFinished",
    "StepResult",
    "StepStarted",
    "StepTimeoutError",
    "StreamHandler",
    "StreamTruncatedError",
    "StreamingRecorder",
    "StructuredOutputError",
    "ToolCall",
    "ToolCallInfo",
    "ToolResult",
    "ToolRoundsError",
    "Usage",
    "WebhookDeliveryError",
    "WebhookHandler",
    "WorkflowError",
    "__version__",
    "ainvoke",
    "arun",
    "astream",
    "invoke",
    "legacy_handler",
    "llm",
    "load_workflow",
    "resolve_handler",
    "run",
    "stream",
]
