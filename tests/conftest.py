"""Shared pytest fixtures for the pipeline_ex test suite.

Fixtures are grouped in sections, one per area; add new ones in a section of their own.
"""

from __future__ import annotations

import importlib.abc
import os
import sys
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
