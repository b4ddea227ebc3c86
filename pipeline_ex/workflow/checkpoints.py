"""Checkpoints: what a run has finished so far, saved after each top-level step, so it can be continued.

A checkpoint holds the run's id, workflow (by name and by the digest of its YAML text), inputs, the
results of the top-level steps that finished (groups as a whole: a `parallel`, `for_each` or `loop`
that was interrupted runs again from its start), the variables, and the attempt number of each step
that was started. A run given a checkpoint (`arun(..., checkpoints=store, resume=True)`) restores the
results, skips the finished steps, and starts the interrupted one as its next attempt
(`StepStarted.attempt`); its events continue the run's `seq` numbering.

`FileCheckpoints` keeps them as JSON files in the run's output folder (`<output dir>/.checkpoints/`), which
is what `pipeline-ex run --resume RUN_ID` reads; `pipeline_ex.distributed.RedisCheckpoints` keeps them in
Redis for the workers. A checkpoint is saved when a step starts (its attempt) and when it finishes
(its result), replacing the file atomically, and removed when the run succeeds.

A python step whose value is not JSON (see `result_codec`) cannot be saved: the checkpoint then stays
at the steps before it (logged at info level), and a resumed run starts again from that step.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pipeline_ex.errors import PipelineError

CheckpointStatus = Literal["running", "failed", "cancelled"]
FOLDER = ".checkpoints"
"""The folder below the output directory that `FileCheckpoints` writes to."""
FORMAT = 1


class CheckpointWarning(UserWarning):
    """A checkpoint could not be written (the output folder is a file, or read-only); the run goes on."""


class ResumeError(PipelineError):
    """A run cannot be continued: no checkpoint, a changed workflow, or inputs that disagree with it."""


@dataclass
class Checkpoint:
    """What a run has finished so far (see the module docstring)."""

    run_id: str
    workflow: str
    digest: str
    """`workflow_digest()` of the workflow the run is of."""
    inputs: dict[str, Any]
    steps: dict[str, Any] = field(default_factory=dict)
    """The run's step results so far (what templates see as `steps`), encoded by `result_codec`."""
    shown: list[str] = field(default_factory=list)
    """The ids in `steps` that `RunResult.steps` lists."""
    values: list[str] = field(default_factory=list)
    """The ids in `steps` that `RunResult.values` lists (python step values)."""
    usage: list[dict[str, Any]] = field(default_factory=list)
    """The usage each LLM step instance of the finished steps reported."""
    vars: dict[str, Any] = field(default_factory=dict)
    finished: list[str] = field(default_factory=list)
    """The ids of the top-level steps that finished, in order."""
    attempts: dict[str, int] = field(default_factory=dict)
    """Top-level step id -> the number of its latest attempt that started."""
    outputs: dict[str, str] = field(default_factory=dict)
    """Step path -> the file its `output_to_file` wrote."""
    last_seq: int = 0
    """The seq of the run's last event when the checkpoint was saved."""
    status: CheckpointStatus = "running"

    def to_json(self) -> dict[str, Any]:
        """The checkpoint as JSON data."""
        return {"format": FORMAT, **{name: getattr(self, name) for name in self.__dataclass_fields__}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Checkpoint:
        """Read `to_json()`'s data.

        :raises ResumeError: for data of another format.
        """
        if data.get("format") != FORMAT:
            raise ResumeError(f"the checkpoint has format {data.get('format')!r}; this version reads {FORMAT}")
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


class CheckpointStore(Protocol):
    """Where checkpoints are kept: one per run id."""

    async def load(self, run_id: str) -> Checkpoint | None:
        """The run's checkpoint, or None when it has none."""
        ...

    async def save(self, checkpoint: Checkpoint) -> None:
        """Keep `checkpoint` as the run's (replacing the one before)."""
        ...

    async def discard(self, run_id: str) -> None:
        """Forget the run's checkpoint (it succeeded)."""
        ...


class FileCheckpoints:
    """Checkpoints as JSON files in `<output_dir>/.checkpoints/<run_id>.json`."""

    def __init__(self, output_dir: str | os.PathLike[str]) -> None:
        self.folder = Path(output_dir) / FOLDER
        self.failed: OSError | None = None
        """Why the last write failed (writes then stop, after one `CheckpointWarning`)."""

    def path(self, run_id: str) -> Path:
        """The file of a run's checkpoint."""
        if not run_id or any(c in run_id for c in "/\\") or run_id.startswith("."):
            raise ResumeError(f"{run_id!r} is not a run id (run ids are printed by 'pipeline-ex run')")
        return self.folder / f"{run_id}.json"

    async def load(self, run_id: str) -> Checkpoint | None:
        """The run's checkpoint, or None when it has no file.

        :raises ResumeError: for a file that is not a checkpoint, naming it.
        """
        return self.read(run_id)

    async def save(self, checkpoint: Checkpoint) -> None:
        """Write the checkpoint to a temporary file and rename it over the run's file (never half written).

        A folder that cannot be written does not stop the run: a `CheckpointWarning` says it cannot be resumed.
        """
        if self.failed is not None:
            return
        try:
            self.write(checkpoint)
        except OSError as error:
            self.failed = error
            warnings.warn(
                f"cannot keep a checkpoint in {self.folder} ({error.strerror or error}); this run goes on but "
                "cannot be resumed: pass a writable --output-dir",
                CheckpointWarning,
                stacklevel=2,
            )

    async def discard(self, run_id: str) -> None:
        """Delete the run's checkpoint file (and the folder, once it is empty)."""
        if self.failed is not None:
            return
        self.path(run_id).unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # other runs' checkpoints are still there
            self.folder.rmdir()

    # The files are small (a few kB): reading and writing them on the event loop costs less than a thread hop.

    def read(self, run_id: str) -> Checkpoint | None:
        """`load`, for callers without an event loop."""
        path = self.path(run_id)
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            return Checkpoint.from_json(json.loads(text))
        except (ValueError, TypeError, KeyError, ResumeError) as error:
            raise ResumeError(f"{path} is not a readable checkpoint ({error}); delete it to start afresh") from None

    def write(self, checkpoint: Checkpoint) -> None:
        """`save`, for callers without an event loop."""
        path = self.path(checkpoint.run_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{checkpoint.run_id}.", suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(checkpoint.to_json(), file, ensure_ascii=False)
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise


def workflow_digest(loaded: Any) -> str:
    """The sha256 of a workflow's YAML text and of the workflows it nests, so a changed file is noticed.

    The defaults given on the command line (`loaded.overrides`) count too: a run continues with its own.
    """
    digest = hashlib.sha256()
    seen: set[str] = set()

    def add(workflow: Any) -> None:
        if workflow.file in seen:
            return
        seen.add(workflow.file)
        digest.update(workflow.source.text.encode("utf-8", "surrogatepass"))
        for item in workflow.all_steps():
            if item.nested is not None:
                add(item.nested)

    add(loaded)
    overrides = getattr(loaded, "overrides", None)
    if overrides:
        digest.update(b"\0overrides\0" + overrides.fingerprint().encode("utf-8"))
    return digest.hexdigest()
