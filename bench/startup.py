"""Start-up: whole `pipeline-ex` processes, median wall time of repeated runs."""

from __future__ import annotations

import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REPEATS = 9
COMMANDS = {
    "pipeline-ex --help": ["--help"],
    "pipeline-ex validate workflows/hello.yaml": ["validate", "workflows/hello.yaml"],
    "pipeline-ex run workflows/hello.yaml --mock": ["run", "workflows/hello.yaml", "--mock"],
}


def _command() -> list[str]:
    script = shutil.which("pipeline-ex") or str(Path(sys.executable).with_name("pipeline-ex"))
    return [script] if Path(script).exists() else [sys.executable, "-m", "pipeline_ex"]


def measure(repeats: int = REPEATS) -> dict[str, float]:
    """Median seconds per command."""
    base = _command()
    results = {}
    for name, args in COMMANDS.items():
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            subprocess.run([*base, *args], cwd=ROOT, capture_output=True, check=True)
            samples.append(time.perf_counter() - started)
        results[name] = statistics.median(samples)
    return results


def main() -> None:
    """Print the median time of each command."""
    for name, seconds in measure().items():
        print(f"{name:<48} {seconds * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
