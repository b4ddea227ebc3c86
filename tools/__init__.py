"""Example tools for the workflows in `workflows/` (importable from the project root)."""
