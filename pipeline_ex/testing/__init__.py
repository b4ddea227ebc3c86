"""The test kit: the `StreamingRecorder` handler and the pytest plugin (the run modes are in `pipeline_ex.modes`)."""

from pipeline_ex.testing.recorder import StreamingRecorder

__all__ = ["StreamingRecorder"]
