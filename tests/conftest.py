"""Shared pytest fixtures for the pipeline_ex test suite.

Fixtures are grouped in sections, one per area; add new ones in a section of their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai_sse_server import OpenAISSEServer

# ---------------------------------------------------------------------------------------------------------
# OpenAI-compatible streaming server (tests/openai_sse_server.py)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def openai_server() -> Iterator[OpenAISSEServer]:
    """A loopback OpenAI Chat Completions server; configure it with `openai_server.script(...)`.

    Point the `openai` provider at it with `api_base_url=openai_server.url`.
    """
    server = OpenAISSEServer().start()
    try:
        yield server
    finally:
        server.stop()
