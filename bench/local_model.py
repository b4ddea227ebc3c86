"""The embedded model: tokens/s and time to first token through pipeline_ex and through raw
llama-cpp-python, on the same prompt with the same settings (same model file, context and sampling).

Both sides count output tokens the same way, by tokenising the reply text with the model.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from pipeline_ex import llm
from pipeline_ex.llm.local_model import default_model_path

PROMPT = "Write a short paragraph about how rivers shape valleys."
SETTINGS: dict[str, Any] = {"max_tokens": 128, "temperature": 0.0, "seed": 7, "repeat_penalty": 1.1}
REPEATS = 9
OURS = "pipeline_ex (local provider)"
RAW = "llama-cpp-python (raw)"
PAIRED = "paired ratio"


def _raw_run(model: Any) -> tuple[float, float]:
    """(TTFT in ms, tokens/s) for one streamed reply straight from llama-cpp-python."""
    started = time.perf_counter()
    first = None
    parts = []
    for chunk in model.create_chat_completion(messages=[{"role": "user", "content": PROMPT}], stream=True, **SETTINGS):
        content = chunk["choices"][0]["delta"].get("content") if chunk["choices"] else None
        if content:
            first = first or time.perf_counter()
            parts.append(content)
    end = time.perf_counter()
    tokens = len(model.tokenize("".join(parts).encode(), add_bos=False, special=True))
    first = first or end
    return (first - started) * 1000, tokens / (end - first) if end > first else 0.0


def _ours() -> tuple[float, float]:
    """(TTFT in ms, tokens/s) for one streamed reply through `llm.invoke` on the local provider."""
    result = llm.invoke(prompt=PROMPT, on_event="null", **SETTINGS)
    done = result.done
    usage = result.response.usage
    tokens = usage.output_tokens if usage is not None and usage.output_tokens else 0
    generating = (done.duration_ms - (done.ttft_ms or 0.0)) / 1000
    return done.ttft_ms or 0.0, tokens / generating if generating > 0 else 0.0


def measure(repeats: int = REPEATS) -> dict[str, dict[str, float]]:
    """Median TTFT (ms) and tokens/s for each path, alternating the two paths run by run, and under PAIRED the
    median over the runs of ours / raw tokens/s (each run against the raw one right after it, so that a slow
    stretch of a shared machine lands on both sides of a pair)."""
    from llama_cpp import Llama

    raw_model = Llama(model_path=str(default_model_path()), n_ctx=2048, n_batch=512, verbose=False)
    _ours(), _raw_run(raw_model)  # load and warm both before timing
    ours, raw = [], []
    for _ in range(repeats):
        ours.append(_ours())
        raw.append(_raw_run(raw_model))
    result = {
        name: {"ttft_ms": statistics.median(t for t, _ in rows), "tokens_per_s": statistics.median(r for _, r in rows)}
        for name, rows in ((OURS, ours), (RAW, raw))
    }
    ratios = [mine / theirs for (_, mine), (_, theirs) in zip(ours, raw, strict=True) if theirs > 0]
    result[PAIRED] = {"tokens_per_s": statistics.median(ratios)}
    return result


def main() -> None:
    """Print TTFT and tokens/s for both paths."""
    results = measure()
    print(f"ours / raw tokens/s, median of paired runs: {results.pop(PAIRED)['tokens_per_s']:.3f}")
    for name, row in results.items():
        print(f"{name:<32} TTFT {row['ttft_ms']:7.1f} ms   {row['tokens_per_s']:7.1f} tokens/s")


if __name__ == "__main__":
    main()
