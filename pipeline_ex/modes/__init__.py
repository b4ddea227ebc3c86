"""Run modes: `live`, `mock`, `record` and `replay` (`PIPELINE_TEST_MODE`).

Runtime code: the test session a run follows, the scripted mock generator, and event cassettes with the
generator that replays them. The test kit (`pipeline_ex.testing`) builds on these.
"""
