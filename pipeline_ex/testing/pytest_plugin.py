"""The pytest plugin every project that installs pipeline-ex gets (registered under `pytest11`).

It registers the `streaming` marker (so `pytest -m streaming` selects streaming tests and
`--strict-markers` accepts it) and provides the `stream_recorder` fixture: a fresh `StreamingRecorder`
that receives the events of every step run in the test, with no wiring.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from pipeline_ex.streaming.ambient import deliver_everything_to
from pipeline_ex.testing.recorder import StreamingRecorder


def pytest_configure(config: pytest.Config) -> None:
    """Register the plugin's markers."""
    config.addinivalue_line("markers", "streaming: a test of streamed LLM events (select with -m streaming)")


@pytest.fixture
def stream_recorder() -> Iterator[StreamingRecorder]:
    """A fresh `StreamingRecorder` that every step run in the test also delivers its events to."""
    recorder = StreamingRecorder()
    with deliver_everything_to(recorder):
        yield recorder
