"""The webhook handler against a real receiver on 127.0.0.1: batching, retries, refusals, no loss, back-pressure."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from webhook_receiver import Receiver, webhook_receiver

from pipeline_ex import BufferHandler, Delta, Done, HandlerError, WebhookHandler, ainvoke, invoke
from pipeline_ex.errors import WorkflowError
from pipeline_ex.streaming.resolve import resolve_handler
from pipeline_ex.workflow import parse_workflow

pytestmark = pytest.mark.streaming

CHUNKS = [f"w{index} " for index in range(40)]


def webhook(url: str, **options: Any) -> dict[str, Any]:
    """A `{handler: webhook, options: ...}` entry, with quick retries unless told otherwise."""
    return {"handler": "webhook", "options": {"url": url, "backoff": 0.01, **options}}


def stream_to(entry: dict[str, Any], chunks: list[str] = CHUNKS) -> BufferHandler:
    """Run one mock step whose events go to a BufferHandler and to the webhook entry; return the buffer."""
    buffer = BufferHandler()
    invoke(prompt="go", provider="mock", mock_response=chunks, on_event=[buffer, entry], step="draft")
    return buffer


def assert_received_in_order_once(receiver: Receiver, buffer: BufferHandler) -> None:
    sent = [event.model_dump(mode="json") for event in buffer.events]
    assert receiver.events == sent
    seqs = [event["seq"] for event in receiver.events]
    assert seqs == sorted(set(seqs))
    assert receiver.events[-1]["type"] == "done"


def test_events_are_batched_and_arrive_in_order_exactly_once() -> None:
    with webhook_receiver() as receiver:
        buffer = stream_to(webhook(receiver.url, batch_size=8, max_delay=0.5))
    assert_received_in_order_once(receiver, buffer)
    assert len(buffer.events) == 41
    assert receiver.requests == len(receiver.batches) <= 8  # 41 events in batches of at most 8
    assert all(1 <= len(batch["events"]) <= 8 for batch in receiver.batches)
    assert [batch["batch"] for batch in receiver.batches] == list(range(len(receiver.batches)))
    run_id = buffer.events[0].run_id
    assert {(batch["run_id"], batch["step"]) for batch in receiver.batches} == {(run_id, "draft")}
    assert receiver.headers[0]["content-type"] == "application/json"


def test_a_lone_event_is_sent_after_max_delay_without_waiting_for_a_full_batch() -> None:
    async def scenario(url: str, receiver: Receiver) -> float:
        handler = WebhookHandler(url=url, batch_size=100, max_delay=0.05)
        first = Delta(content="hi", step="s", run_id="r", seq=1)
        await handler.handle_event(first)
        started = time.perf_counter()
        while not receiver.batches:
            await asyncio.sleep(0.01)
            assert time.perf_counter() - started < 5
        waited = time.perf_counter() - started
        await handler.handle_event(done_event(2, "hi"))
        return waited

    with webhook_receiver() as receiver:
        waited = asyncio.run(scenario(receiver.url, receiver))
    assert 0.04 <= waited < 1.0
    assert [len(batch["events"]) for batch in receiver.batches] == [1, 1]


def done_event(seq: int, text: str = "") -> Done:
    return Done.model_validate(
        {"response": {"text": text, "provider": "mock", "finish_reason": "stop"}, "step": "s", "run_id": "r"}
        | {"seq": seq, "duration_ms": 1.0}
    )


def test_events_arriving_within_max_delay_share_one_batch() -> None:
    async def scenario(url: str) -> None:
        handler = WebhookHandler(url=url, batch_size=100, max_delay=0.5)
        for seq in range(1, 6):
            await handler.handle_event(Delta(content=f"d{seq}", step="s", run_id="r", seq=seq))
            await asyncio.sleep(0.02)  # the stream yields to the loop, as a network stream does
        await handler.handle_event(done_event(6))

    with webhook_receiver() as receiver:
        asyncio.run(scenario(receiver.url))
    assert [len(batch["events"]) for batch in receiver.batches] == [6]


@pytest.mark.parametrize(
    ("failures", "close_next"),
    [([(500, None), (503, None)], 0), ([], 2), ([(429, None)], 1)],
    ids=["5xx", "closed-connection", "429-and-closed"],
)
def test_failed_posts_are_retried_until_everything_is_delivered(failures: list[Any], close_next: int) -> None:
    with webhook_receiver() as receiver:
        receiver.failures = list(failures)
        receiver.close_next = close_next
        buffer = stream_to(webhook(receiver.url, batch_size=10))
    assert_received_in_order_once(receiver, buffer)
    assert receiver.requests == len(receiver.batches) + len(failures) + close_next


def test_a_post_that_gets_no_answer_in_time_is_retried() -> None:
    with webhook_receiver() as receiver:
        receiver.stall_next, receiver.stall = 1, 1.0
        started = time.perf_counter()
        buffer = stream_to(webhook(receiver.url, batch_size=100, timeout=0.2), chunks=["one ", "two"])
        took = time.perf_counter() - started
    assert_received_in_order_once(receiver, buffer)
    assert receiver.requests == len(receiver.batches) + 1
    assert took < 0.9  # the retry did not wait for the stalled answer


def test_retry_after_is_honoured() -> None:
    with webhook_receiver() as receiver:
        receiver.failures = [(429, "1")]
        started = time.perf_counter()
        buffer = stream_to(webhook(receiver.url, batch_size=100, backoff=0.001), chunks=["one ", "two"])
        took = time.perf_counter() - started
    assert_received_in_order_once(receiver, buffer)
    assert took >= 0.95  # the receiver asked for a second; the backoff alone would wait a millisecond
    assert receiver.requests == len(receiver.batches) + 1


def test_a_refusal_is_not_retried_and_fails_the_step_after_exactly_one_done() -> None:
    with webhook_receiver() as receiver:
        receiver.failures = [(400, None)]
        url = receiver.url.replace("http://", "http://user:hunter2secret@") + "?token=abc123"
        buffer = BufferHandler()
        with pytest.raises(HandlerError) as info:
            invoke(
                prompt="go",
                provider="mock",
                mock_response=CHUNKS,
                # one event on its way and one waiting: the third waits for the first POST's answer
                on_event=[buffer, webhook(url, batch_size=1, max_buffer=1, max_delay=0)],
                step="draft",
            )
    message = str(info.value)
    assert receiver.requests == 1
    assert len(buffer.events) < len(CHUNKS)  # the refusal stopped the stream
    assert "HTTP 400 Bad Request, not retried" in message and "bad batch" in message
    assert "not delivered" in message and "user:***@127.0.0.1" in message and "token=***" in message
    assert "hunter2secret" not in message and "abc123" not in message
    assert [type(event) for event in buffer.events].count(Done) == 1
    assert buffer.done is not None and buffer.done.error is not None and buffer.done.error.type == "handler"


def test_when_retries_run_out_the_error_counts_the_events_not_delivered() -> None:
    with webhook_receiver() as receiver:
        receiver.failures = [(503, None)] * 3
        buffer = BufferHandler()
        with pytest.raises(HandlerError) as info:
            invoke(
                prompt="go",
                provider="mock",
                mock_response=["a ", "b ", "c"],
                on_event=[buffer, webhook(receiver.url, batch_size=100, max_delay=10, retries=2)],
            )
    assert receiver.requests == 3 and receiver.batches == []
    message = str(info.value)
    assert "gave up after 3 tries: HTTP 503 Service Unavailable" in message
    assert f"{len(buffer.events)} event(s) not delivered" in message
    assert receiver.url in message
    # delivery failed at the Done, which every handler already has: the step fails after it
    assert [type(event) for event in buffer.events].count(Done) == 1
    assert info.value.done is buffer.done


def test_nothing_is_lost_before_the_step_returns_with_a_slow_receiver() -> None:
    with webhook_receiver() as receiver:
        receiver.delay = 0.05
        buffer = stream_to(webhook(receiver.url, batch_size=4, max_delay=0.01))
        received_when_returned = list(receiver.events)
    assert_received_in_order_once(receiver, buffer)
    assert received_when_returned == receiver.events


def test_a_stalled_receiver_holds_the_stream_back_within_the_buffer_bound() -> None:
    async def scenario(url: str) -> tuple[int, float, WebhookHandler]:
        handler = WebhookHandler(url=url, batch_size=2, max_delay=0, max_buffer=3)
        most = 0
        started = time.perf_counter()
        for seq in range(1, 21):
            await handler.handle_event(Delta(content=f"d{seq}", step="s", run_id="r", seq=seq))
            most = max(most, handler.pending)
        streamed = time.perf_counter() - started
        await handler.handle_event(done_event(21))
        return most, streamed, handler

    with webhook_receiver() as receiver:
        receiver.delay = 0.1
        most, streamed, handler = asyncio.run(scenario(receiver.url))
    assert most <= 3 + 2  # waiting plus the batch on its way
    # 20 deltas, at most 5 held at once: the stream had to wait for several 0.1 s replies
    assert streamed >= 0.5
    assert [event["seq"] for event in receiver.events] == list(range(1, 22))
    assert handler.delivered == 21 and handler.pending == 0
    assert receiver.most_in_flight == 1


def test_secret_headers_come_from_the_environment_and_are_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOOK_TOKEN", "Bearer s3cr3t-hook-value")
    with webhook_receiver() as receiver:
        receiver.failures = [(401, None)]
        entry = webhook(receiver.url, headers={"Authorization": {"env": "HOOK_TOKEN"}, "X-Source": "tests"})
        with pytest.raises(HandlerError) as info:
            stream_to(entry, chunks=["a"])
        stream_to(entry, chunks=["b"])
    assert receiver.headers[0]["authorization"] == "Bearer s3cr3t-hook-value"
    assert receiver.headers[1]["x-source"] == "tests"
    assert "s3cr3t" not in str(info.value) and "HTTP 401" in str(info.value)


def test_webhook_options_are_checked_when_the_workflow_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_SUCH_HOOK_TOKEN", raising=False)
    text = textwrap.dedent(
        """\
        - id: a
          prompt: hi
          stream_handler:
            - console
            - {handler: webhook, options: {url: "http://127.0.0.1:9/h", batch_sise: 3}}
        - id: b
          prompt: hi
          stream_handler:
            - handler: webhook
              options:
                url: "http://127.0.0.1:9/h"
                headers: {Authorization: "Bearer inline-secret"}
        - id: c
          prompt: hi
          stream_handler:
            - handler: webhook
              options:
                url: "http://127.0.0.1:9/h"
                headers: {Authorization: {env: NO_SUCH_HOOK_TOKEN}}
        - id: d
          prompt: hi
          stream_handler: [{handler: webhook, options: {url: "ftp://example.com"}}]
        """
    )
    with pytest.raises(WorkflowError) as info:
        parse_workflow(text, "hooks.yaml", mock=True)
    found = {str(issue.location.key): (issue.location.line, issue.message) for issue in info.value.issues}
    line, message = found["[0].stream_handler[1].options.batch_sise"]
    assert line == 5 and "unknown option 'batch_sise' (did you mean 'batch_size'?)" in message
    assert "WebhookHandler takes: url, headers, batch_size" in message
    _, message = found["[1].stream_handler[0].options.headers"]
    assert "header 'Authorization' holds a secret: write it as {env: VARIABLE}" in message
    assert "inline-secret" not in message
    _, message = found["[2].stream_handler[0].options.headers"]
    assert "environment variable NO_SUCH_HOOK_TOKEN is not set" in message
    _, message = found["[3].stream_handler[0].options.url"]
    assert "is not an http:// or https:// URL" in message


def test_a_url_from_the_environment_is_not_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    with webhook_receiver(path="/services/T000/B000/XXXXsecretpath") as receiver:
        monkeypatch.setenv("HOOK_URL", receiver.url)
        receiver.failures = [(404, None)]
        with pytest.raises(HandlerError) as info:
            stream_to({"handler": "webhook", "options": {"url": {"env": "HOOK_URL"}}}, chunks=["a"])
    message = str(info.value)
    assert "XXXXsecretpath" not in message and "(from $HOOK_URL)" in message and "HTTP 404" in message


def test_steps_on_one_loop_share_a_client_which_the_last_one_closes() -> None:
    from pipeline_ex.streaming import webhook as module

    async def scenario(url: str) -> tuple[int, int]:
        spec = resolve_handler({"handler": "webhook", "options": {"url": url, "max_delay": 0}})
        tasks = [
            ainvoke(prompt="go", provider="mock", mock_response=["a ", "b"], on_event=spec, step=f"s{index}")
            for index in range(5)
        ]
        await asyncio.gather(*tasks)
        loop = asyncio.get_running_loop()
        return len(module._clients), int(loop in module._clients)

    with webhook_receiver() as receiver:
        clients, ours = asyncio.run(scenario(receiver.url))
    assert (clients, ours) == (0, 0)
    assert sorted({batch["step"] for batch in receiver.batches}) == [f"s{index}" for index in range(5)]
    assert len(receiver.events) == 5 * 3


def test_handlers_delivering_at_the_same_time_use_one_client() -> None:
    from pipeline_ex.streaming import webhook as module

    async def scenario(url: str) -> tuple[int, int, int]:
        handlers = [WebhookHandler(url=url, max_delay=0) for _ in range(3)]
        for index, handler in enumerate(handlers):
            await handler.handle_event(Delta(content="x", step=f"s{index}", run_id="r", seq=index + 1))
        clients = {id(handler._client) for handler in handlers}
        users = module._clients[asyncio.get_running_loop()].users
        for index, handler in enumerate(handlers):
            await handler.handle_event(done_event(10 + index).model_copy(update={"step": f"s{index}"}))
        return len(clients), users, len(module._clients)

    with webhook_receiver() as receiver:
        assert asyncio.run(scenario(receiver.url)) == (1, 3, 0)
    assert len(receiver.events) == 6


def test_a_workflow_streams_to_the_console_and_a_webhook_end_to_end(tmp_path: Path) -> None:
    with webhook_receiver() as receiver:
        (tmp_path / "hooked.yaml").write_text(
            textwrap.dedent(
                f"""\
                workflow:
                  name: hooked
                  defaults:
                    stream_handler:
                      - console
                      - {{handler: webhook, options: {{url: "{receiver.url}", batch_size: 3}}}}
                  steps:
                    - id: first
                      prompt: hi
                      mock_response: ["one ", "two ", "three ", "four"]
                    - id: second
                      prompt: again
                      mock_response: ["five"]
                """
            )
        )
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        result = subprocess.run(
            [sys.executable, "-m", "pipeline_ex", "run", "hooked.yaml", "--mock"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
    assert result.returncode == 0, result.stderr
    assert "one two three four" in result.stdout and "five" in result.stdout
    by_step: dict[str, list[dict[str, Any]]] = {}
    for batch in receiver.batches:
        assert len(batch["events"]) <= 3
        by_step.setdefault(batch["step"], []).extend(batch["events"])
    assert [e["type"] for e in by_step["first"]] == ["delta"] * 4 + ["done"]
    assert [e["type"] for e in by_step["second"]] == ["delta", "done"]
    assert by_step["first"][-1]["response"]["text"] == "one two three four"
    assert json.dumps(receiver.batches)  # plain JSON all the way


def test_an_instance_given_as_an_object_serves_one_step_run_after_another() -> None:
    with webhook_receiver() as receiver:
        handler = WebhookHandler(url=receiver.url, max_delay=0)
        for step in ("one", "two"):
            invoke(prompt="go", provider="mock", mock_response=["a ", "b"], on_event=handler, step=step)
    assert [(batch["step"], batch["batch"]) for batch in receiver.batches][:1] == [("one", 0)]
    assert [event["step"] for event in receiver.events] == ["one"] * 3 + ["two"] * 3
    assert handler.delivered == 6 and handler.pending == 0


def test_a_cancelled_step_still_delivers_everything_up_to_its_cancelled_done() -> None:
    async def scenario(url: str, buffer: BufferHandler) -> None:
        entry = webhook(url, batch_size=1, max_buffer=1, max_delay=0)
        task = asyncio.create_task(
            ainvoke(prompt="go", provider="mock", mock_response=CHUNKS, on_event=[buffer, entry], step="draft")
        )
        await asyncio.sleep(0.3)  # the stream is held back by the slow receiver meanwhile
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    buffer = BufferHandler()
    with webhook_receiver() as receiver:
        receiver.delay = 0.05
        asyncio.run(scenario(receiver.url, buffer))
    assert buffer.done is not None and buffer.done.response.finish_reason == "cancelled"
    assert len(buffer.events) < len(CHUNKS) + 1
    assert_received_in_order_once(receiver, buffer)
    assert receiver.events[-1]["response"]["finish_reason"] == "cancelled"


def test_a_run_level_webhook_delivers_the_whole_run_up_to_run_finished(tmp_path: Path) -> None:
    from pipeline_ex import run

    path = tmp_path / "two.yaml"
    path.write_text(
        "- {id: first, prompt: hi, mock_response: ['a ', 'b']}\n- {id: second, prompt: hi, mock_response: ['c']}\n"
    )
    with webhook_receiver() as receiver:
        run(path, mock=True, on_event=webhook(receiver.url, batch_size=4), lifecycle=True)
        received_when_returned = len(receiver.events)
    types = [event["type"] for event in receiver.events]
    assert types[0] == "step_started" and types[-1] == "run_finished"
    assert types.count("done") == 2 and types.count("delta") == 3
    assert received_when_returned == len(types)
    assert {batch["step"] for batch in receiver.batches} == {None}
    assert [batch["batch"] for batch in receiver.batches] == list(range(len(receiver.batches)))
    seqs = [event["seq"] for event in receiver.events if "seq" in event]
    assert seqs == sorted(seqs)
