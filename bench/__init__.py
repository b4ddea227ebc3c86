"""Benchmarks for pipeline_ex (not tests): run with `python -m bench`."""
