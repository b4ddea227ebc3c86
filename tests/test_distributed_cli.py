"""`pipeline-ex worker` and `serve --redis` refuse settings that cannot work, saying what to do."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from server_kit import free_port


def _cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    return subprocess.run(
        [sys.executable, "-m", "pipeline_ex", *args],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _project(tmp_path: Path) -> Path:
    (tmp_path / "workflows").mkdir()
    (tmp_path / "workflows" / "hi.yaml").write_text("- {id: hi, provider: mock, prompt: hi}\n", encoding="utf-8")
    return tmp_path


def test_worker_without_a_redis_url_says_how_to_give_one(tmp_path: Path) -> None:
    result = _cli("worker", cwd=_project(tmp_path))
    assert result.returncode == 2
    assert "no Redis URL: pass --redis redis://HOST:PORT/DB or set PIPELINE_REDIS_URL" in result.stderr


def test_worker_with_an_unreachable_redis_names_it_without_its_password(tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://:hunter2@127.0.0.1:{port}/0"
    result = _cli("worker", cwd=_project(tmp_path), PIPELINE_REDIS_URL=url)
    assert result.returncode == 2, result.stderr
    assert f"cannot reach Redis at redis://:***@127.0.0.1:{port}/0" in result.stderr
    assert "hunter2" not in result.stderr and "Traceback" not in result.stderr


def test_worker_without_a_workflows_folder_is_a_usage_error(tmp_path: Path) -> None:
    result = _cli("worker", "--redis", "redis://127.0.0.1:1/0", "--workflows", "missing", cwd=tmp_path)
    assert result.returncode == 2
    assert "no workflows folder at missing; run every worker from the same project folder" in result.stderr


def test_worker_lease_below_a_second_is_refused(tmp_path: Path) -> None:
    result = _cli("worker", "--redis", "redis://127.0.0.1:1/0", "--lease", "0.5", cwd=_project(tmp_path))
    assert result.returncode == 2
    assert "the lease must be at least 1 second, got 0.5" in result.stderr


def test_serve_with_an_unreachable_redis_does_not_start(tmp_path: Path) -> None:
    port = free_port()
    result = _cli("serve", "--redis", f"redis://127.0.0.1:{port}/0", "--port", str(free_port()), cwd=_project(tmp_path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert f"cannot reach Redis at redis://127.0.0.1:{port}/0" in result.stderr
    assert "apt-get install redis-server" in result.stderr
