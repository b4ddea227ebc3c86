"""Run one benchmark's `measure` in a Python process of its own and bring its figures back.

`python -m bench` runs every section this way. In one long process, each section would also pay for the
objects every earlier section left behind: the garbage collector walks the whole heap, so the fixed cost
per run and the many-streams figures came out higher late in the run than in a process of their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

_CHILD = """
import json, sys
from importlib import import_module
request = json.loads(sys.argv[1])
module = import_module(request["module"])
result = getattr(module, request["function"])(*request["args"], **request["kwargs"])
with open(request["out"], "w") as out:
    json.dump(result, out, default=str)
"""


class BenchmarkFailed(RuntimeError):
    """A benchmark's process exited with an error; the message holds the end of its output."""


def measure_apart(module: str, *args: Any, function: str = "measure", **kwargs: Any) -> Any:
    """`module.function(*args, **kwargs)` run in a fresh interpreter; its result as JSON gives it back.

    Arguments and result go through JSON, so tuples come back as lists and int dict keys as strings.
    The child's output goes to this process's stderr, so progress stays visible.
    """
    with tempfile.TemporaryDirectory(prefix="bench-") as scratch:
        out = Path(scratch) / "result.json"
        request = {"module": module, "function": function, "args": args, "kwargs": kwargs, "out": str(out)}
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(request)],
            cwd=ROOT,
            stdout=sys.stderr,
            stderr=subprocess.PIPE,
            text=True,
        )
        if done.returncode != 0:
            tail = "\n".join(done.stderr.splitlines()[-20:])
            raise BenchmarkFailed(f"{module}.{function} exited with {done.returncode}:\n{tail}")
        sys.stderr.write(done.stderr)
        return json.loads(out.read_text())
