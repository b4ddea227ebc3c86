"""The LLM step: `invoke` / `ainvoke` on haystack chat generators, and the providers they use."""

from pipeline_ex.llm.step import StepResult, ainvoke, invoke

__all__ = ["StepResult", "ainvoke", "invoke"]
