"""The retry decision of one step run: after a failed attempt, try again (how, after what pause) or stop.

The sync and async runs of a step share it; each only runs its attempts and pauses its own way
(`time.sleep` under the interrupt gate, or `asyncio.sleep`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from pipeline_ex.llm.bridge import StreamBridge
from pipeline_ex.llm.policy import StepPolicy, rejects_streaming, retry_delay
from pipeline_ex.llm.rounds import ReplyMismatch, RoundLimitReached
from pipeline_ex.redaction import redacting_logger

logger = redacting_logger("pipeline_ex")


@dataclass(frozen=True)
class TryAgain:
    """The decision to make another attempt.

    :param stream: whether the next attempt streams (False once the model rejected streaming).
    :param pause: seconds to wait before it (none for the fallback to one call).
    """

    stream: bool
    pause: float


class Attempts:
    """Counts a step run's attempts and decides, after each failure, whether there is another one."""

    def __init__(self, policy: StepPolicy, bridge: StreamBridge, model: str | None) -> None:
        self.policy = policy
        self.bridge = bridge
        self.model = model
        self.count = 0
        """The attempts begun so far."""

    def begin(self) -> None:
        """Count the attempt about to start."""
        self.count += 1

    def after_failure(self, error: BaseException, *, streaming: bool) -> TryAgain | None:
        """Whether to try again after `error`: without streaming, as a retry after a pause, or not at all."""
        bridge = self.bridge
        if not isinstance(error, Exception) or bridge.failure is not None or bridge.delivered:
            return None  # cancelled, a handler failed, or output was delivered: a retry would repeat it
        if isinstance(error, RoundLimitReached | ReplyMismatch):
            return None  # the model's replies ended the step; calling it again would not change that
        if streaming and rejects_streaming(error):
            logger.warning(
                "step %r: model %r rejected streaming (%s); making one call and emitting its reply as one Delta",
                bridge.step,
                self.model,
                error,
            )
            return TryAgain(stream=False, pause=0.0)
        pause = retry_delay(self.count)
        deadline = None if self.policy.timeout is None else bridge.started + self.policy.timeout
        out_of_time = deadline is not None and time.perf_counter() + pause >= deadline
        if self.count > self.policy.retries or out_of_time:
            return None
        logger.warning(
            "step %r: attempt %d of %d failed before any output (%s: %s); retrying",
            bridge.step,
            self.count,
            self.policy.retries + 1,
            type(error).__name__,
            error,
        )
        return TryAgain(stream=streaming, pause=pause)
