"""Stream handlers: the protocol, how references resolve, dispatch, and the built-in handlers."""

from pipeline_ex.streaming.buffer import BufferHandler
from pipeline_ex.streaming.callback import CallbackHandler
from pipeline_ex.streaming.console import ConsoleHandler
from pipeline_ex.streaming.dispatch import BoundHandler, Dispatcher
from pipeline_ex.streaming.file import FileHandler, JsonlFileHandler
from pipeline_ex.streaming.legacy import LegacyTupleHandler
from pipeline_ex.streaming.names import BUILTINS, ELIXIR_ALIASES, ENTRY_POINT_GROUP, LEGACY_ALIASES, short_names
from pipeline_ex.streaming.null import NullHandler
from pipeline_ex.streaming.protocol import EventCallback, StreamHandler
from pipeline_ex.streaming.resolve import HandlerSpec, legacy_handler, resolve_handler
from pipeline_ex.streaming.webhook import WebhookDeliveryError, WebhookHandler

__all__ = [
    "BUILTINS",
    "ELIXIR_ALIASES",
    "ENTRY_POINT_GROUP",
    "LEGACY_ALIASES",
    "BoundHandler",
    "BufferHandler",
    "CallbackHandler",
    "ConsoleHandler",
    "Dispatcher",
    "EventCallback",
    "FileHandler",
    "HandlerSpec",
    "JsonlFileHandler",
    "LegacyTupleHandler",
    "NullHandler",
    "StreamHandler",
    "WebhookDeliveryError",
    "WebhookHandler",
    "legacy_handler",
    "resolve_handler",
    "short_names",
]
