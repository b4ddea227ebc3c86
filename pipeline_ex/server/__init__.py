"""`pipeline-ex serve`: the workflows of a folder over HTTP (SSE, plain text, JSON, OpenAI-compatible).

Needs the `server` extra (Starlette and uvicorn).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pipeline_ex.errors import ExtraNotInstalledError

if TYPE_CHECKING:
    from starlette.applications import Starlette


def create_app(workflows: str | Path = "workflows", **options: object) -> Starlette:
    """Build the Starlette app (see `pipeline_ex.server.app.create_app` for the options)."""
    try:
        from pipeline_ex.server.app import create_app as build
    except ModuleNotFoundError as error:
        raise ExtraNotInstalledError("pipeline-ex serve", "server", error.name or "starlette") from error
    return build(workflows, **options)  # type: ignore[arg-type]


def serve(
    workflows: str | Path = "workflows", *, host: str = "127.0.0.1", port: int = 8000, mock: bool = False
) -> None:
    """Serve the workflows of a folder with uvicorn until interrupted. Binds to loopback by default."""
    try:
        import uvicorn
    except ModuleNotFoundError as error:
        raise ExtraNotInstalledError("pipeline-ex serve", "server", "uvicorn") from error
    uvicorn.run(create_app(workflows, mock=mock), host=host, port=port, log_level="info")


__all__ = ["create_app", "serve"]
