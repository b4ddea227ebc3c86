"""A module handler: its module-level `handle_event` is stateless, so one module serves every run."""

from __future__ import annotations

import sys

from pipeline_ex import Delta, Done, Event


def handle_event(event: Event) -> None:
    """Print text deltas in capitals as they arrive, and the finish reason at the end."""
    match event:
        case Delta(content=text, kind="text"):
            sys.stdout.write(text.upper())
            sys.stdout.flush()
        case Done(response=response):
            sys.stdout.write(f"\n[{event.step}: {response.finish_reason}]\n")
            sys.stdout.flush()
