"""An exclusive lock on an open file, taken without waiting (`flock`), so two writers never share a file."""

from __future__ import annotations

import sys

if sys.platform == "win32":  # pragma: no cover - no flock there

    def try_lock(fd: int) -> bool:
        """Windows has no `flock`: the lock is not taken, and every caller gets the file."""
        return True

else:
    import fcntl

    def try_lock(fd: int) -> bool:
        """Take the exclusive lock on an open file without waiting; False when another process holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True
