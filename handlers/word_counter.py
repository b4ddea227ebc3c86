"""A class handler with options: a fresh instance per step run, so its count never leaks between runs."""

from __future__ import annotations

import sys

from pipeline_ex import Delta, Done, Event


class WordCounter:
    """Counts the words of a step's reply that have at least `min_length` letters; reports on Done.

    Options (YAML `stream_handler_options`):
        label: how the count is described (default "words").
        min_length: the shortest word that counts (default 1).
    """

    def __init__(self, label: str = "words", min_length: int = 1) -> None:
        self.label = label
        self.min_length = min_length
        self.parts: list[str] = []

    def handle_event(self, event: Event) -> None:
        """Collect text deltas; on Done print the count to stderr."""
        match event:
            case Delta(content=text, kind="text"):
                self.parts.append(text)
            case Done():
                words = [w for w in "".join(self.parts).split() if len(w.strip(".,;:!?\"'")) >= self.min_length]
                print(f"{event.step}: {len(words)} {self.label}", file=sys.stderr)
