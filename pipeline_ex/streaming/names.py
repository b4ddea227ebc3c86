"""The names a handler can be given by: built-in short names, Elixir aliases, and entry points."""

from __future__ import annotations

from importlib.metadata import EntryPoint, entry_points

ENTRY_POINT_GROUP = "pipeline_ex.handlers"
"""Packages register extra handler short names under this entry-point group."""

BUILTINS: dict[str, str] = {
    "console": "pipeline_ex.streaming.console:ConsoleHandler",
    "file": "pipeline_ex.streaming.file:FileHandler",
    "jsonl": "pipeline_ex.streaming.file:JsonlFileHandler",
    "buffer": "pipeline_ex.streaming.buffer:BufferHandler",
    "null": "pipeline_ex.streaming.null:NullHandler",
    "recorder": "pipeline_ex.testing.recorder:StreamingRecorder",
    "webhook": "pipeline_ex.streaming.webhook:WebhookHandler",
}
"""Short name -> `module:attribute` of the built-in handler."""

ELIXIR_ALIASES: dict[str, str] = {
    "Pipeline.Streaming.ConsoleHandler": "console",
    "Pipeline.Streaming.FileHandler": "file",
    "Pipeline.Streaming.JsonlHandler": "jsonl",
    "Pipeline.Streaming.BufferHandler": "buffer",
    "Pipeline.Streaming.NullHandler": "null",
    "Pipeline.TestMode.StreamingRecorder": "recorder",
}
"""The migration guide's Elixir module names -> the matching Python built-in."""

LEGACY_ALIASES: dict[str, str] = {
    "Pipeline.AsyncStreaming.ConsoleHandler": "Pipeline.Streaming.ConsoleHandler",
    "Pipeline.AsyncStreaming.FileHandler": "Pipeline.Streaming.FileHandler",
    "Pipeline.AsyncStreaming.BufferHandler": "Pipeline.Streaming.BufferHandler",
    "Pipeline.AsyncStreaming.NullHandler": "Pipeline.Streaming.NullHandler",
    "Pipeline.AsyncStreaming.Handler": "Pipeline.Streaming.ConsoleHandler",
}
"""Legacy `Pipeline.AsyncStreaming.*` names -> their current replacement (used with a deprecation warning)."""


def handler_entry_points() -> dict[str, EntryPoint]:
    """Handlers other installed packages registered under `pipeline_ex.handlers`, by name."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def short_names() -> list[str]:
    """Every short name a `stream_handler:` may use: built-ins first, then entry points."""
    extra = sorted(name for name in handler_entry_points() if name not in BUILTINS)
    return [*BUILTINS, *extra]
