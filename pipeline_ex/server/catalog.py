"""The workflows a server offers: every `*.yaml` / `*.yml` file of a folder, loaded and checked once."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline_ex.errors import PipelineError
from pipeline_ex.redaction import redacting_logger
from pipeline_ex.workflow.loader import LoadedWorkflow, load_workflow
from pipeline_ex.workflow.schema import LLMStep

logger = redacting_logger("pipeline_ex.server")


@dataclass
class WorkflowCatalog:
    """Workflows by name, plus the files that could not be loaded (and why)."""

    workflows: dict[str, LoadedWorkflow] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_folder(cls, folder: str | Path, *, mock: bool) -> WorkflowCatalog:
        """Load every workflow file in `folder`; a file that fails to load is reported, not served."""
        catalog = cls()
        files = sorted(p for p in Path(folder).glob("*") if p.suffix in (".yaml", ".yml") and p.is_file())
        for path in files:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", DeprecationWarning)
                    loaded = load_workflow(path, mock=mock)
            except PipelineError as error:
                catalog.problems[str(path)] = str(error)
                logger.warning("not serving %s: %s", path, error)
                continue
            if loaded.name in catalog.workflows:
                catalog.problems[str(path)] = f"another file already serves a workflow named {loaded.name!r}"
                logger.warning("not serving %s: duplicate workflow name %r", path, loaded.name)
                continue
            catalog.workflows[loaded.name] = loaded
        return catalog

    def describe(self) -> list[dict[str, Any]]:
        """The workflows and their declared inputs, as `GET /workflows` returns them."""
        listing = []
        for name, loaded in sorted(self.workflows.items()):
            inputs = {
                input_name: {
                    "type": spec.type,
                    "description": spec.description,
                    "required": "default" not in spec.model_fields_set,
                    "default": spec.default,
                }
                for input_name, spec in loaded.workflow.inputs.items()
            }
            steps = [step.id for step in loaded.workflow.steps]
            listing.append({"name": name, "description": loaded.workflow.description, "inputs": inputs, "steps": steps})
        return listing


def answer_step(loaded: LoadedWorkflow) -> str | None:
    """The id of a workflow's last top-level LLM step: its text is the run's answer (for chat completions).

    Steps inside groups are not candidates: a `for_each` has many instances, a `parallel` group many
    children, and none of them is the one answer.
    """
    llm_steps = [step.id for step in loaded.workflow.steps if isinstance(step, LLMStep)]
    return llm_steps[-1] if llm_steps else None
