"""A run that keeps a checkpoint as it goes, and that can start from one (see `checkpoints`).

`DurableRun` sits between the runner and its `CheckpointStore`: `open` finds the run's checkpoint (when
resuming) and checks it against the workflow and inputs, `restore` puts its results back into the run,
and `step_started` / `step_finished` / `ended` save what changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline_ex.events import Usage
from pipeline_ex.redaction import redacting_logger
from pipeline_ex.workflow.checkpoints import Checkpoint, CheckpointStatus, CheckpointStore, ResumeError, workflow_digest
from pipeline_ex.workflow.result_codec import NotStorable, decode_result, encode_result, encode_value

if TYPE_CHECKING:
    from pipeline_ex.context import Context
    from pipeline_ex.workflow.engine import Engine
    from pipeline_ex.workflow.loader import LoadedWorkflow
    from pipeline_ex.workflow.runner import RunResult

logger = redacting_logger("pipeline_ex")


class DurableRun:
    """The checkpoint of one run, saved through `store` as the run's top-level steps start and finish."""

    def __init__(self, store: CheckpointStore, checkpoint: Checkpoint, *, resumed: bool) -> None:
        self.store = store
        self.checkpoint = checkpoint
        self.resumed = resumed
        """The run continues a checkpoint that was saved before."""
        self._stuck: str | None = None
        """The step whose result could not be saved: the checkpoint stays before it."""

    @classmethod
    async def open(
        cls,
        store: CheckpointStore,
        loaded: LoadedWorkflow,
        run_id: str,
        inputs: Mapping[str, Any],
        *,
        found: Checkpoint | None,
        given_inputs: bool,
    ) -> DurableRun:
        """The run's durable state: `found` (the checkpoint it continues) when there is one, else a new one.

        :param inputs: the run's resolved inputs (checked against `found`'s when `given_inputs`).
        :param given_inputs: the caller passed inputs; on resume they must be the checkpoint's.
        :raises ResumeError: the checkpoint is of another workflow, of a changed workflow file, or of other
            inputs; or the inputs are not JSON.
        """
        digest = workflow_digest(loaded)
        if found is None:
            try:
                saved = {name: encode_value(value) for name, value in inputs.items()}
            except NotStorable as error:
                raise ResumeError(f"the run's inputs cannot be checkpointed: {error}") from None
            return cls(store, Checkpoint(run_id, loaded.name, digest, saved), resumed=False)
        if found.workflow != loaded.name:
            raise ResumeError(f"run {run_id} is of workflow {found.workflow!r}, not {loaded.name!r}")
        if found.digest != digest:
            raise ResumeError(
                f"the workflow {loaded.name!r} ({loaded.file}) changed since run {run_id} started, so its finished "
                "steps may not fit it any more; restore the file, or start a new run (a run given --provider, --model "
                "or --set continues with the same values)"
            )
        if given_inputs and dict(inputs) != found.inputs:
            raise ResumeError(f"run {run_id} continues with the inputs it started with; leave the inputs out to resume")
        return cls(store, found, resumed=True)

    def restore(self, ctx: Context, engine: Engine, result: RunResult) -> None:
        """Put the finished steps' results, variables, outputs, usage and seq numbering back into the run."""
        from pathlib import Path

        saved = self.checkpoint
        ctx.steps.update({step_id: decode_result(data) for step_id, data in saved.steps.items()})
        ctx.vars.update(saved.vars)
        result.steps.update({step_id: ctx.steps[step_id] for step_id in saved.shown})
        result.values.update({step_id: ctx.steps[step_id] for step_id in saved.values})
        engine.outputs.update({path: Path(file) for path, file in saved.outputs.items()})
        engine.usage.extend(Usage.model_validate(usage) for usage in saved.usage)
        ctx.continue_after(saved.last_seq)

    def finished(self, step_id: str) -> bool:
        """Whether the checkpoint has the step's result (it is skipped)."""
        return step_id in self.checkpoint.finished

    async def step_started(self, step_id: str, ctx: Context) -> int:
        """Count a new attempt of a top-level step, save it, and return its number."""
        saved = self.checkpoint
        attempt = saved.attempts.get(step_id, 0) + 1
        if self._stuck is None:
            saved.attempts[step_id] = attempt
            saved.last_seq = ctx.seq_reached()
            await self.store.save(saved)
        return attempt

    async def step_finished(self, step_id: str, ctx: Context, engine: Engine, result: RunResult) -> None:
        """Save the run's results after a top-level step finished (unless one of them cannot be saved)."""
        if self._stuck is not None:
            return
        saved = self.checkpoint
        try:
            steps = {key: encode_result(value) for key, value in ctx.steps.items()}
            variables = {key: encode_value(value) for key, value in ctx.vars.items()}
        except NotStorable as error:
            self._stuck = step_id
            logger.info(
                "run %s: the checkpoint stays before step %r, whose result cannot be saved (%s); a resumed run "
                "runs it again. Return JSON data (text, numbers, lists, mappings) from python steps to avoid this",
                ctx.run_id,
                step_id,
                error,
            )
            return
        saved.steps, saved.vars = steps, variables
        saved.shown = list(result.steps)
        saved.values = list(result.values)
        saved.finished.append(step_id)
        saved.outputs = {path: str(file) for path, file in engine.outputs.items()}
        saved.usage = [usage.model_dump(mode="json") for usage in engine.usage]
        saved.last_seq = ctx.seq_reached()
        await self.store.save(saved)

    async def ended(self, status: CheckpointStatus | None, ctx: Context) -> None:
        """Remove the checkpoint of a run that succeeded (`status` None); keep how another one ended."""
        if status is None:
            await self.store.discard(self.checkpoint.run_id)
            return
        self.checkpoint.status = status
        if self._stuck is None:
            self.checkpoint.last_seq = ctx.seq_reached()
        await self.store.save(self.checkpoint)
