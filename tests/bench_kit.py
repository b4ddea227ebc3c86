"""Importing the benchmarks (bench/) from guard tests."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from types import ModuleType


def import_bench(name: str) -> ModuleType:
    """Import `bench.<name>`. bench/ is a top-level folder, not part of the package: the repository root
    goes on sys.path only for this import, so that the root's other folders (handlers/, workflows/) stay
    unimportable for the rest of the suite."""
    root = str(Path(__file__).resolve().parent.parent)
    sys.path.insert(0, root)
    try:
        return importlib.import_module(f"bench.{name}")
    finally:
        sys.path.remove(root)
