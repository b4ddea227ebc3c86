"""End to end over HTTP: a loopback OpenAI-format server streams CHUNKS chunks as fast as it can.

Compared in one process: the raw `openai` client, haystack's `OpenAIChatGenerator` with a no-op
callback, and pipeline_ex's `invoke` and `astream` on the `openai` provider.
"""

from __future__ import annotations

import asyncio
import os

import openai
from haystack.components.generators.chat import OpenAIChatGenerator
from haystack.dataclasses import ChatMessage
from haystack.utils import Secret

from bench.common import interleaved_medians
from bench.sse_server import FastSSEServer
from pipeline_ex import astream, llm
from pipeline_ex.workflow import parse_workflow

CHUNKS = 10_000
REPEATS = 9
BASELINE = "haystack OpenAIChatGenerator (noop callback)"
BASELINE_ASYNC = "haystack OpenAIChatGenerator.run_async (noop callback)"


def measure(chunks: int = CHUNKS, repeats: int = REPEATS) -> dict[str, float]:
    """Seconds per streamed reply for each client, against the same server."""
    os.environ.setdefault("OPENAI_API_KEY", "not-needed-on-loopback")
    with FastSSEServer(chunks) as server:
        client = openai.OpenAI(base_url=server.url, api_key="x")
        generator = OpenAIChatGenerator(
            api_key=Secret.from_token("x"),
            model="bench",
            api_base_url=server.url,
            generation_kwargs={"stream_options": {"include_usage": True}},
        )
        messages = [ChatMessage.from_user("bench")]
        flow = parse_workflow(
            f"- id: bench\n  provider: openai\n  options: {{api_base_url: '{server.url}'}}\n  prompt: bench\n"
            "  model: bench\n  stream_handler: 'null'\n",
            "http_bench.yaml",
        )

        def raw() -> None:
            for _ in client.chat.completions.create(
                model="bench",
                messages=[{"role": "user", "content": "bench"}],
                stream=True,
                stream_options={"include_usage": True},
            ):
                pass

        async def drain() -> None:
            async for _ in astream(flow):
                pass

        async def noop(_: object) -> None:
            return None

        async def run_async() -> None:
            async_generator = OpenAIChatGenerator(
                api_key=Secret.from_token("x"),
                model="bench",
                api_base_url=server.url,
                generation_kwargs={"stream_options": {"include_usage": True}},
            )
            await async_generator.run_async(messages, streaming_callback=noop)
            await async_generator.close_async()

        runs = {
            "openai client (raw)": raw,
            BASELINE: lambda: generator.run(messages, streaming_callback=lambda chunk: None),
            BASELINE_ASYNC: lambda: asyncio.run(run_async()),
            "pipeline_ex invoke": lambda: llm.invoke(
                prompt="bench", provider="openai", model="bench", api_base_url=server.url, on_event="null"
            ),
            "pipeline_ex astream": lambda: asyncio.run(drain()),
        }
        return interleaved_medians(runs, repeats)


def main() -> None:
    """Print seconds per reply and the ratio to haystack's generator."""
    results = measure()
    base = results[BASELINE]
    for name, value in results.items():
        print(f"{name:<48} {value * 1000:>9.1f} ms  {value / base:>5.2f}x")


if __name__ == "__main__":
    main()
