"""`pipeline-ex serve`'s app (`create_app`) on a real uvicorn, on a free 127.0.0.1 port, from a thread."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from pipeline_ex.server import create_app


class LoopbackServer:
    """Serve a folder of workflows over HTTP for the length of a `with` block; `url` is its address."""

    def __init__(self, folder: Path, **options: Any) -> None:
        options.setdefault("mock", True)
        options.setdefault("api_key", "")
        self.app = create_app(folder, **options)
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_level="warning", access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve()), daemon=True)
        self.url = ""

    def __enter__(self) -> LoopbackServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the test server did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
