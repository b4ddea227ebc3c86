"""Real deployments for tests and benchmarks: `pipeline-ex worker` processes and `serve --redis` replicas."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import redis
from server_kit import CliServer, cli_executable


class WorkerProcess:
    """A real `pipeline-ex worker` process (a Celery worker), started in `cwd` and stopped by PID."""

    def __init__(self, redis_url: str, cwd: Path, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log = cwd / f"worker-{name}.log"
        self.args = [cli_executable(), "worker", "--redis", redis_url, "--name", name, *args]
        self.env = {**os.environ, "PYTHONPATH": str(cwd), **(env or {})}
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60) -> WorkerProcess:
        """Start the worker and wait until Celery says it is ready."""
        with open(self.log, "wb") as out:
            self.process = subprocess.Popen(self.args, stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.cwd)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the worker exited with {self.process.returncode}:\n{self.text()}")
            if " ready." in self.text():
                return self
            time.sleep(0.05)  # a child process getting ready: its log is all there is to watch
        self.kill()
        raise RuntimeError(f"the worker did not get ready:\n{self.text()}")

    def text(self) -> str:
        """What the worker logged so far."""
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def kill(self) -> None:
        """SIGKILL: the worker dies holding its runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        """Stop the worker by PID: SIGTERM (warm shutdown), then SIGKILL if it takes too long."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


def replica(redis_url: str, cwd: Path, name: str, *args: str) -> CliServer:
    """A `pipeline-ex serve --redis` replica serving `cwd/workflows`, started."""
    server = CliServer(["--redis", redis_url, "--workflows", "workflows", *args], cwd / f"serve-{name}.log", cwd=cwd)
    return server.start()


def kill_server(server: CliServer) -> None:
    """SIGKILL a replica: its connections drop, as when its machine goes away."""
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()


def holder(client: redis.Redis, run_id: str, prefix: str = "pipeline-ex") -> str:
    """The name of the worker the run's record says holds it."""
    raw = client.hget(f"{prefix}:run:{run_id}", "worker")
    return raw.decode() if raw else ""
