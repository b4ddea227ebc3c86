"""The server's Starlette app, which lets a stream's body frames go to the ASGI server's `send` directly.

Every middleware of the server's own stack (Starlette's `ServerErrorMiddleware` and `ExceptionMiddleware`,
the route's exception wrapper, and `UnexpectedFailures`) wraps `send` only to note that a response has
started. A streaming response sends its start through that stack, as any response does; its body frames,
one `send` per batch of events, may then skip the four wrappers, each a coroutine call per batch that
changes nothing. Middleware added later (`add_middleware`) may transform bodies, so then every frame goes
through the stack again.
"""

from __future__ import annotations

from typing import Any

from starlette.applications import Starlette
from starlette.types import Receive, Scope, Send

SERVER_SEND = "pipeline_ex.server_send"
"""The scope key holding the `send` the app was called with (set only while its middleware is its own)."""


class StreamingApp(Starlette):
    """A Starlette app that records the `send` it was called with, for `body_send`, while its middleware is its own."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._own_middleware = list(self.user_middleware)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Record `send` for the streams (unless middleware was added since), then serve as Starlette does."""
        if scope["type"] == "http" and self.user_middleware == self._own_middleware:
            scope[SERVER_SEND] = send
        await super().__call__(scope, receive, send)


def body_send(scope: Scope, send: Send) -> Send:
    """The `send` for a response's body frames once its start went through `send`: the server's own if recorded."""
    recorded: Send | None = scope.get(SERVER_SEND)
    return recorded if recorded is not None else send
