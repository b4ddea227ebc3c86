"""The model calls of one LLM step: a tool round after a reply that calls tools, a repair after a bad one.

A repair follows a structured reply that does not match the step's `output_schema`.

`Conversation` holds what the rounds share (the messages so far, the tools, the calls made, the usage of
the earlier calls, the validated value) and decides, after each reply, what comes next (`after_reply`).
The step's sync and async runs each make the calls and run the tools their own way, and both follow
that decision, so the rules live here once:

- a reply with tool calls: run them and call the model again, at most `max_tool_rounds` times; a model
  still calling tools after that ends the step (`RoundLimitReached`);
- a reply that calls a *declared* tool ends the step with `finish_reason="tool_calls"`: the calls are
  handed back to the caller (the step's own tools of that round still run);
- a structured reply that fails validation: send it back with the problems, at most `schema_retries`
  times; then the step fails (`ReplyMismatch`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from pipeline_ex.events import ToolCall, ToolCallInfo, ToolResult, Usage
from pipeline_ex.llm.normalize import add_usage, normalize_usage
from pipeline_ex.llm.options import DEFAULT_MAX_TOOL_ROUNDS, DEFAULT_SCHEMA_RETRIES
from pipeline_ex.llm.tools import Toolbox


def _with_call_ids(reply: Any, pending: Sequence[PendingCall]) -> Any:
    """The reply with each tool call carrying the id its result will name (providers that give none).

    Sending the made-up ids back with both the calls and their results keeps each result paired with its
    call in the next request (Gemini sends `functionCall.id` and `functionResponse.id`).
    """
    from haystack.dataclasses import ChatMessage
    from haystack.dataclasses import ToolCall as HaystackToolCall

    calls = [HaystackToolCall(tool_name=c.name, arguments=c.arguments, id=c.id) for c in pending]
    return ChatMessage.from_assistant(reply.text, meta=reply.meta, tool_calls=calls, reasoning=reply.reasoning)


class RoundLimitReached(Exception):
    """The model called tools again after the step's last allowed tool round."""

    def __init__(self, rounds: int, names: Sequence[str]) -> None:
        self.rounds = rounds
        asked = ", ".join(sorted(set(names)))
        super().__init__(
            f"the model still called tools ({asked}) after {rounds} tool round(s), the step's max_tool_rounds; "
            "raise max_tool_rounds, or tell the model in the prompt when to stop calling tools"
        )


class ReplyMismatch(Exception):
    """The structured reply did not match the output schema, also after the repair attempts."""

    def __init__(self, attempts: int, problems: str) -> None:
        self.attempts = attempts
        self.problems = problems
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts"
        super().__init__(
            f"the reply does not match the output schema after {tries}: {problems}; "
            "raise schema_retries, simplify the schema, or use a provider with a structured mode"
        )


class UnreadableToolCalls(Exception):
    """The model ended its reply to call tools, but no call could be read from the reply."""

    def __init__(self) -> None:
        super().__init__(
            "the model finished its reply to call tools, but the reply holds no tool call the provider "
            "integration could read (it dropped malformed or merged calls); the step cannot go on"
        )


Next = Literal["done", "tools", "repair"]
"""What follows a reply: nothing (the step ends), a tool round, or a repair of a structured reply."""


@dataclass
class PendingCall:
    """A tool call of the current round, with the id its events carry."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass
class Conversation:
    """The state of one step's model calls, and the rules for what follows each reply."""

    messages: list[Any]
    """The haystack `ChatMessage`s sent with the next call."""
    toolbox: Toolbox | None = None
    max_tool_rounds: int = DEFAULT_MAX_TOOL_ROUNDS
    schema: Any = None
    """The step's `OutputSchema`, or None."""
    schema_retries: int = DEFAULT_SCHEMA_RETRIES
    rounds: int = 0
    """Tool rounds run so far."""
    repairs: int = 0
    calls: list[ToolCallInfo] = field(default_factory=list)
    """Every call made, with its result once the tool returned."""
    earlier_usage: Usage | None = None
    """The usage of the replies `bank` counted: each one another call followed, and one the step failed on."""
    data: Any = None
    pending: list[PendingCall] = field(default_factory=list)
    banked: int = 0
    """How many replies `earlier_usage` counts."""

    def generator_kwargs(self) -> dict[str, Any]:
        """What every call passes besides the messages: the tools, when the step has some."""
        return {"tools": list(self.toolbox.tools)} if self.toolbox is not None else {}

    def after_reply(self, reply: Any, computed_usage: dict[str, Any] | None, call_id: Callable[[int], str]) -> Next:
        """Decide what follows `reply`; raises `RoundLimitReached` or `ReplyMismatch` when the step must fail.

        :param call_id: the id for the call at a position of the reply, when the provider gave it none
            (the bridge named the call's argument fragments with the same id).
        """
        calls = (reply.tool_calls if reply is not None else None) or []
        if (
            self.toolbox is not None
            and not calls
            and reply is not None
            and reply.meta.get("finish_reason") == "tool_calls"
        ):
            raise UnreadableToolCalls
        if calls and self.toolbox is not None:
            handed_back_only = all(c.tool_name in self.toolbox.declared for c in calls)
            if self.rounds >= self.max_tool_rounds and not handed_back_only:
                self.bank(reply, computed_usage)  # the step fails with this reply: its usage still counts
                raise RoundLimitReached(self.rounds, [c.tool_name for c in calls])
            self.rounds += 1
            self.pending = [
                PendingCall(c.id or call_id(i), c.tool_name, dict(c.arguments or {})) for i, c in enumerate(calls)
            ]
            if any(not c.id for c in calls):
                reply = _with_call_ids(reply, self.pending)
            self.messages.append(reply)
            return "tools"
        if self.schema is not None:
            from pipeline_ex.llm.structured import SchemaMismatch, repair_message

            try:
                self.data = self.schema.validate_json(reply.text if reply is not None else "")
            except SchemaMismatch as mismatch:
                if self.repairs >= self.schema_retries:
                    self.bank(reply, computed_usage)  # the step fails with this reply: its usage still counts
                    shown = "; ".join(mismatch.problems[:5]) or mismatch.message
                    raise ReplyMismatch(self.repairs + 1, shown) from None
                from haystack.dataclasses import ChatMessage

                self.repairs += 1
                self.messages.extend([reply, ChatMessage.from_user(repair_message(mismatch))])
                return "repair"
        return "done"

    def bank(self, reply: Any, computed_usage: dict[str, Any] | None) -> None:
        """Count a reply's usage into `earlier_usage`: another model call follows it, or the step fails on it.

        The reply the step ends with normally is not banked: its usage is in the Done already.
        """
        meta = reply.meta if reply is not None else {}
        usage = normalize_usage(meta.get("usage")) or normalize_usage(computed_usage)
        self.earlier_usage = add_usage(self.earlier_usage, usage)
        self.banked += 1

    def call_events(self, step: str, run_id: str, next_seq: Any) -> Iterator[ToolCall]:
        """The `ToolCall` events of the pending calls (the arguments are complete).

        Each is numbered as it is taken, so that events delivered in between keep `seq` in order.
        """
        for c in self.pending:
            yield ToolCall(step=step, run_id=run_id, seq=next_seq(), id=c.id, name=c.name, arguments=c.arguments)

    def to_run(self) -> list[PendingCall]:
        """The pending calls the step runs itself (not the declared ones, which are handed back)."""
        declared = self.toolbox.declared if self.toolbox is not None else frozenset()
        return [c for c in self.pending if c.name not in declared]

    def record(self, done: Sequence[ToolCallInfo], step: str, run_id: str, next_seq: Any) -> Iterator[ToolResult]:
        """Keep the round's results, add them to the messages, and yield their `ToolResult` events.

        The events come in call order, each numbered as it is taken; the declared calls get none (the
        caller runs them). Take them all: the messages for the next call are added as they are taken.
        """
        from haystack.dataclasses import ChatMessage
        from haystack.dataclasses import ToolCall as HaystackToolCall

        by_id = {info.id: info for info in done}
        for call in self.pending:
            info = by_id.get(call.id)
            if info is None:  # a declared tool: handed back with no result
                self.calls.append(ToolCallInfo(id=call.id, name=call.name, arguments=call.arguments))
                continue
            self.calls.append(info)
            origin = HaystackToolCall(tool_name=call.name, arguments=call.arguments, id=call.id)
            self.messages.append(ChatMessage.from_tool(info.result or "", origin=origin, error=info.error))
            yield ToolResult(
                step=step,
                run_id=run_id,
                seq=next_seq(),
                id=call.id,
                name=call.name,
                result=info.result or "",
                error=info.error,
            )

    def hands_back(self) -> bool:
        """Whether the round just run called a declared tool (the step then ends, handing the calls back)."""
        declared = self.toolbox.declared if self.toolbox is not None else frozenset()
        return any(c.name in declared for c in self.pending)
