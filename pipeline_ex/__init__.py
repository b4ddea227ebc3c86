"""pipeline_ex: LLM steps that stream typed events (`Delta`, `Done`) to pluggable handlers.

Importing the package is cheap: the haystack-backed parts (`llm`, `invoke`, `ainvoke`, `StepResult`)
and the workflow layer (`run`, `arun`, `load_workflow`, ...) load on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pipeline_ex.context import Context
from pipeline_ex.errors import (
    HandlerError,
    HandlerResolutionError,
    PipelineError,
    ProviderConfigError,
    ProviderError,
    ProviderNotInstalledError,
    StepError,
    StreamTruncatedError,
    WorkflowError,
)
from pipeline_ex.events import Delta, Done, ErrorInfo, Event, FinishReason, Response, Usage
from pipeline_ex.streaming import (
    BufferHandler,
    CallbackHandler,
    ConsoleHandler,
    FileHandler,
    JsonlFileHandler,
    NullHandler,
    StreamHandler,
    legacy_handler,
    resolve_handler,
)
from pipeline_ex.testing import StreamingRecorder

if TYPE_CHECKING:
    from pipeline_ex import llm
    from pipeline_ex.llm import StepResult, ainvoke, invoke
    from pipeline_ex.workflow import LoadedWorkflow, RunResult, arun, load_workflow, run

__version__ = "0.1.0"

_LAZY = {
    "llm": ("pipeline_ex.llm", None),
    "invoke": ("pipeline_ex.llm", "invoke"),
    "ainvoke": ("pipeline_ex.llm", "ainvoke"),
    "StepResult": ("pipeline_ex.llm", "StepResult"),
    "run": ("pipeline_ex.workflow", "run"),
    "arun": ("pipeline_ex.workflow", "arun"),
    "load_workflow": ("pipeline_ex.workflow", "load_workflow"),
    "LoadedWorkflow": ("pipeline_ex.workflow", "LoadedWorkflow"),
    "RunResult": ("pipeline_ex.workflow", "RunResult"),
}


def __getattr__(name: str) -> Any:
    """Load the haystack-backed names on first access."""
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'pipeline_ex' has no attribute {name!r}") from None
    module = importlib.import_module(module_name)
    value = module if attribute is None else getattr(module, attribute)
    globals()[name] = value
    return value


__all__ = [
    "BufferHandler",
    "CallbackHandler",
    "ConsoleHandler",
    "Context",
    "Delta",
    "Done",
    "ErrorInfo",
    "Event",
    "FileHandler",
    "FinishReason",
    "HandlerError",
    "HandlerResolutionError",
    "JsonlFileHandler",
    "LoadedWorkflow",
    "NullHandler",
    "PipelineError",
    "ProviderConfigError",
    "ProviderError",
    "ProviderNotInstalledError",
    "Response",
    "RunResult",
    "StepError",
    "StepResult",
    "StreamHandler",
    "StreamTruncatedError",
    "StreamingRecorder",
    "Usage",
    "WorkflowError",
    "__version__",
    "ainvoke",
    "arun",
    "invoke",
    "legacy_handler",
    "llm",
    "load_workflow",
    "resolve_handler",
    "run",
]
