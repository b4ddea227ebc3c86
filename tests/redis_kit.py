"""A real `redis-server` for tests and benchmarks: a free loopback port, persistence off, a scratch folder.

Debian's `redis-server` package provides the binary; `.ci/run` installs it when it is missing.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis


class RedisServer:
    """One `redis-server` process on 127.0.0.1, started by `start()` and stopped by PID with `stop()`."""

    def __init__(self) -> None:
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None

    @property
    def url(self) -> str:
        """The server's redis:// URL."""
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        """Start the server and wait until it answers PING."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed; .ci/run installs it (Debian: apt-get install redis-server)"
            )
        self._dir = tempfile.TemporaryDirectory(prefix="pipeline-ex-redis-")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.process = subprocess.Popen(
            [
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                *("--dir", self._dir.name, "--logfile", str(Path(self._dir.name) / "redis.log")),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + timeout
        try:
            while True:
                try:
                    if client.ping():
                        return self
                except redis.ConnectionError:
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        log = Path(self._dir.name, "redis.log")
                        self.stop()
                        shown = log.read_text() if log.exists() else ""
                        raise RuntimeError(f"redis-server did not answer PING on port {self.port}: {shown}") from None
                    time.sleep(0.02)  # waiting for a child process to listen: nothing to block on
        finally:
            client.close()

    def client(self) -> redis.Redis:
        """A sync client of the server (the caller closes it)."""
        return redis.Redis(port=self.port)

    def stop(self) -> None:
        """Stop the server by its PID and remove its folder."""
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None
        if self._dir is not None:
            self._dir.cleanup()
            self._dir = None
