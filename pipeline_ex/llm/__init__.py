"""The LLM step: `invoke` / `ainvoke` on haystack chat generators, and the providers they use.

`invoke`, `ainvoke` and `StepResult` load haystack on first access, so `pipeline_ex.llm.providers` can be
imported (to validate a workflow) without it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline_ex.llm.step import StepResult, ainvoke, invoke

__all__ = ["StepResult", "ainvoke", "invoke"]


def __getattr__(name: str) -> Any:
    """Import the step module when one of its names is first used."""
    if name in __all__:
        value = getattr(importlib.import_module("pipeline_ex.llm.step"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipeline_ex.llm' has no attribute {name!r}")
