"""Workflows: the YAML format, loading with precise errors, running, and migrating legacy files."""

from pipeline_ex.workflow.checkpoints import Checkpoint, CheckpointStore, FileCheckpoints, ResumeError
from pipeline_ex.workflow.iterate import EventStream, astream, stream
from pipeline_ex.workflow.loader import LoadedStep, LoadedWorkflow, load_workflow, parse_workflow
from pipeline_ex.workflow.overrides import OverrideError, OverrideWarning, RunOverrides
from pipeline_ex.workflow.results import (
    FailedResult,
    ForEachResult,
    LoopResult,
    NestedResult,
    ParallelResult,
    SkippedResult,
)
from pipeline_ex.workflow.runner import InputError, RunResult, arun, run
from pipeline_ex.workflow.schema import Workflow, json_schema

__all__ = [
    "Checkpoint",
    "CheckpointStore",
    "EventStream",
    "FailedResult",
    "FileCheckpoints",
    "ForEachResult",
    "InputError",
    "LoadedStep",
    "LoadedWorkflow",
    "LoopResult",
    "NestedResult",
    "OverrideError",
    "OverrideWarning",
    "ParallelResult",
    "ResumeError",
    "RunOverrides",
    "RunResult",
    "SkippedResult",
    "Workflow",
    "arun",
    "astream",
    "json_schema",
    "load_workflow",
    "parse_workflow",
    "run",
    "stream",
]
