"""Shared pytest fixtures for the pipeline_ex test suite.

Fixtures are grouped in sections, one per area; add new ones in a section of their own.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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


# ---------------------------------------------------------------------------------------------------------
# Making an installed provider integration look absent (to test the "missing extra" errors)
# ---------------------------------------------------------------------------------------------------------

ANTHROPIC_INTEGRATION = "haystack_integrations.components.generators.anthropic"

_SITECUSTOMIZE = """
import importlib.abc
import sys


class HideModules(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.startswith(PREFIXES):
            raise ModuleNotFoundError("No module named " + repr(name), name=name)
        return None


sys.meta_path.insert(0, HideModules())
"""


class HideModules(importlib.abc.MetaPathFinder):
    """An import finder that makes modules under some prefixes look uninstalled."""

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        self.prefixes = prefixes

    def find_spec(self, name: str, path: object = None, target: object = None) -> None:
        if name.startswith(self.prefixes):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


@pytest.fixture
def without_anthropic(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Hide anthropic-haystack from this process and from the subprocesses it starts, as if not installed."""
    prefixes = (ANTHROPIC_INTEGRATION,)
    monkeypatch.setattr(sys, "meta_path", [HideModules(prefixes), *sys.meta_path])
    for name in [m for m in sys.modules if m.startswith(prefixes)]:
        monkeypatch.delitem(sys.modules, name)
    folder = tmp_path_factory.mktemp("hide_anthropic")
    (folder / "sitecustomize.py").write_text(f"PREFIXES = {prefixes!r}\n" + _SITECUSTOMIZE)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (str(folder), os.environ.get("PYTHONPATH")) if p))


# ---------------------------------------------------------------------------------------------------------
# Anthropic / Ollama / Gemini wire-format servers (tests/provider_servers.py)
# ---------------------------------------------------------------------------------------------------------

import provider_servers  # noqa: E402  (this section is appended; the module imports only the stdlib)


@pytest.fixture
def anthropic_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[provider_servers.AnthropicServer]:
    """A loopback Anthropic Messages server; configure it with `anthropic_server.script(...)`.

    `ANTHROPIC_BASE_URL` points the Anthropic SDK at it; `ANTHROPIC_API_KEY` is set to
    `provider_servers.ANTHROPIC_TEST_KEY`.
    """
    server = provider_servers.AnthropicServer().start()
    monkeypatch.setenv("ANTHROPIC_BASE_URL", server.url)
    monkeypatch.setenv("ANTHROPIC_API_KEY", provider_servers.ANTHROPIC_TEST_KEY)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ollama_server() -> Iterator[provider_servers.OllamaServer]:
    """A loopback Ollama /api/chat server; point the `ollama` provider at it with `api_base_url=server.url`."""
    server = provider_servers.OllamaServer().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def gemini_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[provider_servers.GeminiServer]:
    """A loopback Gemini generateContent server; configure it with `gemini_server.script(...)`.

    `GOOGLE_GEMINI_BASE_URL` points the google-genai SDK at it; `GOOGLE_API_KEY` is set to
    `provider_servers.GOOGLE_TEST_KEY` and `GEMINI_API_KEY` is removed.
    """
    server = provider_servers.GeminiServer().start()
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.url)
    monkeypatch.setenv("GOOGLE_API_KEY", provider_servers.GOOGLE_TEST_KEY)
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    try:
        yield server
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------------------
# Building failure reports with the garbage collector paused
# ---------------------------------------------------------------------------------------------------------

import gc  # noqa: E402  (this section is appended)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """Pause the garbage collector while pytest builds a report (it parses test sources with `ast.parse`).

    On CPython 3.11.7 a finalizer that runs during `ast.parse` (here: an SDK client's `__del__`, collected
    by chance at that moment) makes it raise "SystemError: AST constructor recursion depth mismatch"
    (CPython gh-106905, fixed in 3.11.8), which pytest reports as an INTERNALERROR and ends the session.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


# Servers for the server security and limit tests (tests/server_kit.py)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kit_workflows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every workflow of tests/test_server.py, written to an absolute folder."""
    from server_kit import write_workflows

    folder: Path = write_workflows(tmp_path_factory.mktemp("kit") / "workflows")
    assert folder.is_absolute()
    return folder


@pytest.fixture
def start_server(kit_workflows: Path) -> Iterator[Callable[..., Any]]:
    """Start servers: `start_server(folder=None, uvicorn_config=None, **create_app_options)`.

    Each is uvicorn on 127.0.0.1 in a thread (`server_kit.ThreadServer`); they stop when the test ends.
    """
    from server_kit import ThreadServer

    from pipeline_ex.server import create_app

    started: list[Any] = []

    def start(folder: Path | None = None, uvicorn_config: dict[str, Any] | None = None, **options: Any) -> Any:
        options.setdefault("api_key", "")
        running = ThreadServer(create_app(folder or kit_workflows, **options), **(uvicorn_config or {})).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


# ---------------------------------------------------------------------------------------------------------
# A real redis-server for the distributed event log (tests/redis_kit.py)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """One `redis-server` for the session, on a free loopback port with persistence off."""
    from redis_kit import RedisServer

    server = RedisServer().start()
    try:
        yield server
    finally:
        server.stop()
