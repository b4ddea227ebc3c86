"""Example custom stream handlers, kept in a project the way a user project keeps its own."""
