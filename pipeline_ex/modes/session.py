"""Test modes: `PIPELINE_TEST_MODE` is `live` (default), `mock`, `record` or `replay`.

- `mock`: every step runs on the mock provider (scripted replies, no provider call).
- `record`: live calls, and every step's events are saved to a cassette.
- `replay`: every step is served from its cassette, with its chunk boundaries, finish reason, usage and
  timing (`PIPELINE_REPLAY_SPEED` scales the pauses; 0 replays instantly, the default under pytest), but
  only for the request it recorded (the same messages, model, options and step path).

Cassettes live in `PIPELINE_CASSETTE_DIR` (default `cassettes`), one file per run named after the
workflow (`invoke` for steps run directly); a name that would put the file outside that folder is an
error. The pytest plugin sets a session per test instead.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from pipeline_ex.errors import PipelineError
from pipeline_ex.modes.cassette import Cassette, cassette_path
from pipeline_ex.modes.mock_script import MockScript

Mode = Literal["live", "mock", "record", "replay"]
MODES: tuple[Mode, ...] = ("live", "mock", "record", "replay")
MODE_ENV = "PIPELINE_TEST_MODE"
CASSETTE_DIR_ENV = "PIPELINE_CASSETTE_DIR"
REPLAY_SPEED_ENV = "PIPELINE_REPLAY_SPEED"
DEFAULT_CASSETTE_DIR = "cassettes"


class TestModeError(PipelineError):
    """A test-mode setting is invalid."""


class LiveCallBlocked(PipelineError):
    """A test tried a real provider call without being allowed to."""


@dataclass
class TestSession:
    """How step runs behave under test: the mode, the cassette, the mock script and the live-call guard."""

    mode: Mode = "live"
    cassette: Cassette | None = None
    script: MockScript | None = None
    live_allowed: bool = True
    replay_speed: float = 1.0
    label: str = ""
    """Who set this session up (a test id), for error messages."""
    mock_steps: bool = False
    """Every step runs on the mock provider (`--mock`), also while a cassette records it."""


def mode_from_env() -> Mode:
    """The mode `PIPELINE_TEST_MODE` asks for.

    :raises TestModeError: for a value other than live, mock, record or replay.
    """
    value = os.environ.get(MODE_ENV, "").strip().lower() or "live"
    if value not in MODES:
        raise TestModeError(f"{MODE_ENV}={value!r} is not a test mode; use one of: {', '.join(MODES)}")
    return value


def replay_speed_from_env(default: float = 1.0) -> float:
    """The replay speed factor from `PIPELINE_REPLAY_SPEED` (0 means no pauses).

    :param default: the speed when the variable is not set: 1 (the recorded timing) for runs, 0 in
        tests (the pytest plugin), which want replays to be instant.
    """
    raw = os.environ.get(REPLAY_SPEED_ENV, "").strip()
    if not raw:
        return default
    try:
        speed = float(raw)
    except ValueError:
        raise TestModeError(f"{REPLAY_SPEED_ENV}={raw!r} is not a number (1 = recorded speed, 0 = instant)") from None
    if speed < 0:
        raise TestModeError(f"{REPLAY_SPEED_ENV} must not be negative, got {raw!r}")
    return speed


def session_from_env(run_name: str, *, named_after: str = "the workflow's name") -> TestSession:
    """The session the environment asks for, for a run named `run_name` (its cassette's file name).

    :param named_after: where `run_name` comes from, for the error about a name that would put the
        cassette outside `PIPELINE_CASSETTE_DIR`.
    :raises TestModeError: for an invalid `PIPELINE_TEST_MODE` or `PIPELINE_REPLAY_SPEED`.
    :raises CassetteError: for a `run_name` that would leave the cassette folder (see `cassette_path`).
    """
    mode = mode_from_env()
    session = TestSession(mode=mode, replay_speed=replay_speed_from_env())
    if mode in ("record", "replay"):
        directory = Path(os.environ.get(CASSETTE_DIR_ENV) or DEFAULT_CASSETTE_DIR)
        path = cassette_path(directory, run_name, named_after=named_after)
        session.cassette = Cassette(path, record=mode == "record")
    return session


_ACTIVE: ContextVar[TestSession | None] = ContextVar("pipeline_ex_test_session", default=None)


def session_for_run(run_name: str, *, mock: bool = False) -> TestSession:
    """The test mode of a run that starts now: decided once, here, and carried on the run's `Context`.

    A test fixture's session comes first (the `llm_mock` and cassette fixtures), then
    `PIPELINE_TEST_MODE`. `mock=True` (`--mock`, `run(..., mock=True)`) makes it a mock run either way,
    keeping a fixture's scripted replies.

    :raises TestModeError: for an invalid `PIPELINE_TEST_MODE` or `PIPELINE_REPLAY_SPEED`.
    """
    override = _ACTIVE.get()
    base = override if override is not None else session_from_env(run_name)
    if not mock or base.mode in ("mock", "replay"):  # a replay answers from its cassette, --mock or not
        return base
    if base.mode == "record":  # record a mock run
        return replace(base, mock_steps=True)
    return TestSession(mode="mock", script=base.script, label=base.label)


def active_override() -> TestSession | None:
    """The session a test fixture set for the current context, if any."""
    return _ACTIVE.get()


@contextmanager
def using_session(session: TestSession) -> Iterator[TestSession]:
    """Within the block, every run uses `session` instead of the environment's."""
    token = _ACTIVE.set(session)
    try:
        yield session
    finally:
        _ACTIVE.reset(token)
