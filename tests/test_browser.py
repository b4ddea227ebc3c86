"""The page at `/` in headless Chromium: pick a workflow, run it, and watch the tokens arrive as they stream."""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_kit import chromium_tab, require_chromium
from server_kit import ThreadServer

from pipeline_ex.server import create_app

pytestmark = pytest.mark.streaming

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
CHUNKS = [f"token{n} " for n in range(30)]  # 30 chunks, 50 ms apart: about 1.5 s
DELAY_MS = 50
SEPARATOR_CHUNKS = ["before ", "line\u2028separator ", "after"]
WORKFLOW_NAMES = ["a_quick", "separator", "slow_story"]

require_chromium()  # skips the module without Chromium and Playwright


def workflow(name: str, step: dict[str, Any], inputs: dict[str, Any]) -> str:
    return json.dumps(
        {"workflow": {"name": name, "description": f"The {name} workflow.", "inputs": inputs, "steps": [step]}}
    )


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ThreadServer]:
    folder = tmp_path / "workflows"
    folder.mkdir()
    slow_step = {
        "id": "answer",
        "provider": "mock",
        "prompt": "{{ inputs.topic }}",
        "mock_response": CHUNKS,
        "options": {"delay_ms": DELAY_MS},
    }
    (folder / "slow.yaml").write_text(
        workflow("slow_story", slow_step, {"topic": {"description": "what the story is about"}})
    )
    separator_step = {"id": "answer", "provider": "mock", "prompt": "go", "mock_response": SEPARATOR_CHUNKS}
    (folder / "separator.yaml").write_text(workflow("separator", separator_step, {}))
    (folder / "quick.yaml").write_text(
        workflow("a_quick", {"id": "answer", "provider": "mock", "prompt": "{{ inputs.q }}"}, {"q": {"default": "x"}})
    )
    with ThreadServer(create_app(folder, api_key="")) as running:
        yield running


@pytest.fixture
def page(server: ThreadServer) -> Iterator[Any]:
    with chromium_tab(1000, 800) as tab:
        yield tab


def test_the_page_streams_tokens_into_the_output_before_the_run_ends(server: ThreadServer, page: Any) -> None:
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#workflow option').length === 3")
    assert page.eval_on_selector_all("#workflow option", "os => os.map(o => o.value)") == WORKFLOW_NAMES
    page.select_option("#workflow", "slow_story")
    assert page.inner_text("#description") == "The slow_story workflow."
    assert page.inner_text("label[for=input-topic]") == "topic (required)"
    assert page.get_attribute("#input-topic", "placeholder") == "what the story is about"
    page.fill("#input-topic", "a lighthouse")

    page.click("#run")
    samples: list[tuple[float, int, str, bool]] = []  # (seconds since click, #output length, #summary, disabled)
    clicked = time.perf_counter()
    while time.perf_counter() - clicked < 10:
        length, summary, disabled = page.evaluate(
            "() => [document.querySelector('#output').textContent.length,"
            " document.querySelector('#summary').textContent, document.querySelector('#run').disabled]"
        )
        samples.append((time.perf_counter() - clicked, length, summary, disabled))
        if summary:
            break
        page.wait_for_timeout(60)
    streaming = [length for _, length, summary, _ in samples if not summary and length > 0]
    growth = [b for a, b in itertools.pairwise(streaming) if b > a]
    print(
        f"\n[browser] {len(samples)} samples; #output length while #summary was empty: {streaming}; "
        f"summary after {samples[-1][0]:.2f} s"
    )
    assert len(growth) >= 3, f"the output did not grow incrementally before the run ended: {samples}"
    assert streaming == sorted(streaming)
    assert all(disabled for _, length, summary, disabled in samples if length and not summary)  # no double run
    assert streaming[0] < len("".join(CHUNKS)) // 2  # the first text came long before the last

    page.wait_for_function("document.querySelector('#summary').textContent.includes('tokens out')")
    page.wait_for_function("!document.querySelector('#run').disabled")
    full_text = "".join(CHUNKS)
    assert page.inner_text('#output span[data-step="answer"]').strip() == full_text.strip()
    assert page.inner_text("#output .step") == "answer"
    summary = page.inner_text("#summary")
    assert summary.startswith("answer: stop")
    assert f"{len(CHUNKS)} tokens out" in summary and "2 in" in summary  # the prompt "a lighthouse"
    assert "TTFT" in summary and " s" in summary
    assert len(page.query_selector_all("#summary div")) == 1

    ARTIFACTS.mkdir(exist_ok=True)
    screenshot = ARTIFACTS / "browser-run.png"
    page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 1000


def test_the_page_shows_a_request_error(server: ThreadServer, page: Any) -> None:
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#workflow option').length === 3")
    page.select_option("#workflow", "slow_story")
    page.click("#run")  # the required topic is left empty
    page.wait_for_function("document.querySelector('#summary .error') !== null")
    assert page.inner_text("#summary .error").startswith("Error: missing input 'topic'")
    assert page.inner_text("#output") == ""


def test_text_with_a_unicode_line_separator_is_shown(server: ThreadServer, page: Any) -> None:
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#workflow option').length === 3")
    page.select_option("#workflow", "separator")
    page.click("#run")
    page.wait_for_function("!document.querySelector('#run').disabled && document.querySelector('#output').textContent")
    page.wait_for_timeout(300)
    assert errors == []
    assert page.inner_text("#summary").startswith("answer: stop")
