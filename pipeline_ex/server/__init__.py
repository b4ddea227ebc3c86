"""`pipeline-ex serve`: the workflows of a folder over HTTP (SSE, plain text, JSON, OpenAI-compatible).

Needs the `server` extra (Starlette and uvicorn).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline_ex.errors import ExtraNotInstalledError, PipelineError

if TYPE_CHECKING:
    import asyncio

    from starlette.applications import Starlette


class ServerConfigError(PipelineError):
    """`serve` was given settings that cannot be used together (the message names them)."""


def create_app(workflows: str | Path = "workflows", **options: object) -> Starlette:
    """Build the Starlette app (see `pipeline_ex.server.app.create_app` for the options)."""
    try:
        from pipeline_ex.server.app import create_app as build
    except ModuleNotFoundError as error:
        raise ExtraNotInstalledError("pipeline-ex serve", "server", error.name or "starlette") from error
    return build(workflows, **options)  # type: ignore[arg-type]


def uvicorn_protocol(http: str = "auto", *, read_timeout: float | None = None) -> type[asyncio.Protocol]:
    """Uvicorn's HTTP protocol class (`auto`, `h11`, `httptools`) with a deadline for request headers."""
    from pipeline_ex.server.http import DEFAULT_READ_TIMEOUT
    from pipeline_ex.server.http import uvicorn_protocol as build

    return build(http, read_timeout=DEFAULT_READ_TIMEOUT if read_timeout is None else read_timeout)


def split_hosts(text: str) -> list[str]:
    """Host names from a comma-separated list (as `--allowed-hosts` and the environment give them)."""
    return [name.strip() for name in text.split(",") if name.strip()]


def is_loopback(host: str) -> bool:
    """Whether binding to `host` keeps the server on this machine (localhost or a loopback address)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_hosts(host: str) -> list[str]:
    """`Host` values to accept for a server bound to `host`: a concrete non-loopback address names itself."""
    if is_loopback(host):
        return []
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return [host]  # a host name the user chose to bind to
    if address.is_unspecified:
        return []  # 0.0.0.0 or ::: which names to accept is --allowed-hosts' business
    return [f"[{address}]" if address.version == 6 else str(address)]


def serve(
    workflows: str | Path = "workflows",
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    mock: bool = False,
    allowed_hosts: Sequence[str] | None = None,
    read_timeout: float | None = None,
    max_runs: int | None = None,
    log_events: int | None = None,
    log_bytes: int | None = None,
    **options: Any,
) -> None:
    """Serve the workflows of a folder with uvicorn until interrupted. Binds to loopback by default.

    `allowed_hosts` adds `Host` values to the loopback ones (a concrete address given as `host` is added by
    itself; by default they come from `PIPELINE_SERVER_ALLOWED_HOSTS`); `read_timeout` bounds how long
    request headers and bodies may take to arrive; `max_runs`, `log_events`, `log_bytes` and the other
    options go to `create_app`. Before serving, the process's garbage collector is tuned for many streams at
    once (see `pipeline_ex.server.gc_tuning`).
    """
    try:
        import uvicorn
    except ModuleNotFoundError as error:
        raise ExtraNotInstalledError("pipeline-ex serve", "server", "uvicorn") from error
    from pipeline_ex.server.http import DEFAULT_READ_TIMEOUT

    timeout = DEFAULT_READ_TIMEOUT if read_timeout is None else read_timeout
    if allowed_hosts is None:
        from pipeline_ex.server.security import ALLOWED_HOSTS_ENV

        allowed_hosts = split_hosts(os.environ.get(ALLOWED_HOSTS_ENV, ""))
    hosts = [*allowed_hosts, *bind_hosts(host)]
    bounds = {"max_runs": max_runs, "log_events": log_events, "log_bytes": log_bytes}
    options.update({name: value for name, value in bounds.items() if value is not None})
    try:
        app = create_app(workflows, mock=mock, allowed_hosts=hosts, read_timeout=timeout, **options)
        protocol = uvicorn_protocol(read_timeout=timeout)
    except ValueError as error:  # settings that do not go together; uvicorn's own errors are not ours to word
        raise ServerConfigError(str(error)) from None
    remote = app.state.pipeline.remote
    if remote is not None:
        remote.deployment.check_reachable()  # before uvicorn starts, so the error is ours, not a traceback
    from pipeline_ex.server.gc_tuning import tune_for_many_streams

    tune_for_many_streams()
    uvicorn.run(app, host=host, port=port, log_level="info", http=protocol)


__all__ = ["ServerConfigError", "create_app", "is_loopback", "serve", "split_hosts", "uvicorn_protocol"]
