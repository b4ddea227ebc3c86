"""Test mode: the `StreamingRecorder` handler and the scripted mock generator."""

from pipeline_ex.testing.recorder import StreamingRecorder

__all__ = ["StreamingRecorder"]
