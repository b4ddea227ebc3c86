"""The pytest plugin every project that installs pipeline-ex gets (registered under `pytest11`).

- Markers: `streaming` (select with `pytest -m streaming`), `live` (allows real provider calls) and
  `cassette("name")` (replays `cassettes/name.jsonl` next to the test file, for the requests it recorded).
- Replays (the cassette marker, or `PIPELINE_TEST_MODE=replay`) are instant unless
  `PIPELINE_REPLAY_SPEED` says otherwise.
- Options: `--pipeline-live` allows real provider calls in every test; `--pipeline-record` records
  `@pytest.mark.cassette` tests from live providers instead of replaying them.
- Fixtures: `stream_recorder` (a `StreamingRecorder` that receives the events of every run in the
  test), `llm_mock` (puts the test in mock mode and scripts replies, tool calls included).
- A guard: outside `@pytest.mark.live` and `--pipeline-live`, a real provider call fails at once with
  a message that says how to allow it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline_ex.modes.cassette import Cassette, cassette_path
from pipeline_ex.modes.mock_script import MockScript
from pipeline_ex.modes.session import TestSession, replay_speed_from_env, session_from_env, using_session
from pipeline_ex.streaming.ambient import deliver_everything_to
from pipeline_ex.testing.recorder import StreamingRecorder

_SESSION_KEY = pytest.StashKey[TestSession]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add `--pipeline-live` and `--pipeline-record`."""
    group = parser.getgroup("pipeline_ex")
    group.addoption("--pipeline-live", action="store_true", help="pipeline_ex: allow real provider calls in every test")
    group.addoption(
        "--pipeline-record",
        action="store_true",
        help="pipeline_ex: record @pytest.mark.cassette tests from live providers instead of replaying them",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Register the plugin's markers."""
    config.addinivalue_line("markers", "streaming: a test of streamed LLM events (select with -m streaming)")
    config.addinivalue_line("markers", "live: the test may call real LLM providers")
    config.addinivalue_line(
        "markers",
        "cassette(name): replay cassettes/NAME.jsonl next to the test file (record it with --pipeline-record)",
    )


def _cassette_path(request: pytest.FixtureRequest, name: str) -> Path:
    return cassette_path(Path(request.path).parent / "cassettes", name, named_after="the cassette marker's name")


@pytest.fixture(autouse=True)
def _pipeline_ex_test_session(request: pytest.FixtureRequest) -> Iterator[TestSession]:
    """The test's session: the live-call guard, and the cassette of `@pytest.mark.cassette` tests."""
    config = request.config
    session = session_from_env(request.node.name, named_after="the test's name")
    session.replay_speed = replay_speed_from_env(default=0.0)  # tests replay instantly unless told otherwise
    session.label = f"test {request.node.nodeid!r}"
    session.live_allowed = bool(config.getoption("--pipeline-live") or request.node.get_closest_marker("live"))
    marker = request.node.get_closest_marker("cassette")
    if marker is not None:
        if len(marker.args) != 1 or not isinstance(marker.args[0], str):
            raise pytest.UsageError(f"{request.node.nodeid}: use @pytest.mark.cassette('name')")
        record = bool(config.getoption("--pipeline-record"))
        session.mode = "record" if record else "replay"
        session.cassette = Cassette(_cassette_path(request, marker.args[0]), record=record)
        session.live_allowed = session.live_allowed or record
    request.node.stash[_SESSION_KEY] = session
    with using_session(session):
        yield session


@pytest.fixture
def stream_recorder() -> Iterator[StreamingRecorder]:
    """A fresh `StreamingRecorder` that every step run in the test also delivers its events to."""
    recorder = StreamingRecorder()
    with deliver_everything_to(recorder):
        yield recorder


@pytest.fixture
def llm_mock(_pipeline_ex_test_session: TestSession) -> MockScript:
    """Put the test in mock mode and script replies: `llm_mock.reply(text_or_chunks, match=..., ...)`.

    `llm_mock.reply("Sunny.", tool_calls=[{"name": "weather", "arguments": {"city": "Paris"}}])` makes the
    model call tools first (a list of such rounds for several), then reply. Every step then runs on the
    mock provider; `llm_mock.prompts` lists the prompts it was asked.
    """
    script = MockScript()
    _pipeline_ex_test_session.mode = "mock"
    _pipeline_ex_test_session.script = script
    return script
