"""Reading what a child process writes to a pseudo-terminal, for the tests of terminal output."""

from __future__ import annotations

import os
import threading


def read_in_background(master: int) -> tuple[threading.Thread, list[bytes]]:
    """Start a thread that reads the master side of a pty until the child side is closed everywhere.

    Returns the thread (join it after the child exits and the slave fd is closed) and the list the
    chunks are appended to.
    """
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 4096)
            except OSError:  # EIO once the slave side is closed everywhere
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    return reader, chunks
