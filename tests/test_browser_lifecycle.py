"""The page at `/` in headless Chromium with steps that run at the same time: one panel per step instance,
parallel steps streaming side by side, for_each items in a row, and the Stop button cancelling a run.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browser_kit import chromium_tab, require_chromium
from server_kit import ThreadServer, TimedRegistry

from pipeline_ex import Done, RunFinished, StepFinished
from pipeline_ex.server import create_app

pytestmark = pytest.mark.streaming

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
PROS = [f"pro{n} " for n in range(24)]  # 24 chunks, 60 ms apart: about 1.4 s
CONS = [f"con{n} " for n in range(24)]
LONG = [f"word{n} " for n in range(300)]  # 300 chunks, 40 ms apart: 12 s, unless stopped

SIDE_BY_SIDE = {
    "name": "side_by_side",
    "description": "Two views at once, then two sections at once.",
    "inputs": {"topic": {"default": "tides"}},
    "defaults": {"provider": "mock"},
    "steps": [
        {"id": "intro", "prompt": "Introduce {{ inputs.topic }}", "mock_response": ["An ", "intro."]},
        {
            "id": "views",
            "parallel": [
                {"id": "pros", "prompt": "Pros", "mock_response": PROS, "options": {"delay_ms": 60}},
                {"id": "cons", "prompt": "Cons", "mock_response": CONS, "options": {"delay_ms": 60}},
            ],
        },
        {
            "id": "sections",
            "for_each": ["alpha", "beta"],
            "as": "topic",
            "max_parallel": 2,
            "steps": [{"id": "draft", "prompt": "Write about {{ topic }}", "options": {"delay_ms": 30}}],
        },
        {"id": "wrap", "prompt": "Wrap up {{ inputs.topic }}"},
    ],
}
LONG_PAIR = {
    "name": "stoppable",
    "inputs": {},
    "defaults": {"provider": "mock"},
    "steps": [
        {
            "id": "pair",
            "parallel": [
                {"id": "left", "prompt": "Left", "mock_response": LONG, "options": {"delay_ms": 40}},
                {"id": "right", "prompt": "Right", "mock_response": LONG, "options": {"delay_ms": 40}},
            ],
        },
        {"id": "after", "prompt": "never reached"},
    ],
}

require_chromium()  # skips the module without Chromium and Playwright

SAMPLE = """() => {
  const text = (path) => {
    const panel = document.querySelector(`.panel[data-path="${path}"]`);
    return panel ? panel.querySelector(".text").textContent.length : -1;
  };
  const status = (path) => {
    const panel = document.querySelector(`.panel[data-path="${path}"]`);
    return panel ? panel.dataset.status : null;
  };
  return {pros: text("pros"), cons: text("cons"), prosStatus: status("pros"), consStatus: status("cons"),
          run: document.querySelector("#run-status").textContent};
}"""


@pytest.fixture
def registry() -> TimedRegistry:
    return TimedRegistry()


@pytest.fixture
def server(tmp_path: Path, registry: TimedRegistry) -> Iterator[ThreadServer]:
    folder = tmp_path / "workflows"
    folder.mkdir()
    for document in (SIDE_BY_SIDE, LONG_PAIR):
        (folder / f"{document['name']}.yaml").write_text(json.dumps({"workflow": document}))
    with ThreadServer(create_app(folder, api_key="", registry=registry)) as running:
        yield running


@pytest.fixture
def page(server: ThreadServer) -> Iterator[Any]:
    with chromium_tab(1100, 900) as tab:
        errors: list[str] = []
        tab.on("pageerror", lambda error: errors.append(str(error)))
        yield tab
        assert errors == []


def box(page: Any, path: str) -> dict[str, float]:
    found: dict[str, float] | None = page.locator(f'.panel[data-path="{path}"]').bounding_box()
    assert found is not None, f"no visible panel for {path}"
    return found


def same_row(left: dict[str, float], right: dict[str, float]) -> bool:
    """Side by side: the same top, and the second starts where the first ends (no overlap)."""
    return abs(left["y"] - right["y"]) < 2 and left["x"] + left["width"] <= right["x"]


def start(page: Any, server: ThreadServer, workflow: str) -> None:
    page.goto(server.url + "/")
    page.wait_for_function("document.querySelectorAll('#workflow option').length === 2")
    page.select_option("#workflow", workflow)
    page.click("#run")


def test_parallel_steps_stream_side_by_side(server: ThreadServer, page: Any, registry: TimedRegistry) -> None:
    start(page, server, "side_by_side")
    samples: list[dict[str, Any]] = []
    layout: tuple[dict[str, float], dict[str, float]] | None = None
    shot = False
    full = len("".join(PROS))
    clicked = time.perf_counter()
    while time.perf_counter() - clicked < 15:
        sample = page.evaluate(SAMPLE)
        samples.append(sample)
        streaming = 0 < sample["pros"] < full and 0 < sample["cons"] < full
        if layout is None and streaming:  # both panels are visible and partly filled, at the same time
            layout = box(page, "pros"), box(page, "cons")
        if not shot and streaming and min(sample["pros"], sample["cons"]) > full // 2:
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "parallel-run.png"), full_page=True)
            shot = True
        if sample["run"].startswith("Run "):
            break
        page.wait_for_timeout(50)
    assert samples[-1]["run"].startswith("Run ok"), samples[-1]
    during = [s for s in samples if s["prosStatus"] == "running" and s["consStatus"] == "running"]
    pros_growth = [b > a for a, b in itertools.pairwise(s["pros"] for s in during)]
    cons_growth = [b > a for a, b in itertools.pairwise(s["cons"] for s in during)]
    print(f"\n[browser] {len(samples)} samples, {len(during)} while both streamed; pros {[s['pros'] for s in during]}")
    assert sum(pros_growth) >= 3 and sum(cons_growth) >= 3, f"the panels did not both grow while streaming: {during}"
    assert layout is not None and same_row(*layout), layout
    assert shot and (ARTIFACTS / "parallel-run.png").stat().st_size > 1000

    # the final layout: sequential steps stacked, each group's children in a row
    page.wait_for_function("!document.querySelector('#run').disabled")
    paths = page.eval_on_selector_all(".panel", "panels => panels.map(p => p.dataset.path)")
    assert paths == ["intro", "pros", "cons", "sections[0].draft", "sections[1].draft", "wrap"]
    intro, pros, cons = box(page, "intro"), box(page, "pros"), box(page, "cons")
    first, second, wrap = box(page, "sections[0].draft"), box(page, "sections[1].draft"), box(page, "wrap")
    assert same_row(pros, cons) and same_row(first, second)
    assert intro["y"] + intro["height"] <= pros["y"]
    assert max(pros["y"] + pros["height"], cons["y"] + cons["height"]) <= first["y"]
    assert first["y"] + first["height"] <= wrap["y"]
    for path, text in (("pros", PROS), ("cons", CONS), ("sections[1].draft", ["Mock reply to: Write about beta"])):
        assert page.inner_text(f'.panel[data-path="{path}"] .text').strip() == "".join(text).strip()
        status = page.inner_text(f'.panel[data-path="{path}"] .status')
        assert status.startswith("ok · stop") and "tokens out" in status, status
    statuses = page.eval_on_selector_all(".panel", "panels => panels.map(p => p.dataset.status)")
    assert statuses == ["ok"] * 6
    assert page.eval_on_selector_all(".group", "groups => groups.map(g => g.dataset.status)") == ["ok", "ok"]
    assert len(page.query_selector_all("#summary div")) == 6  # one line per step instance's done
    (run_id,) = registry.logs
    assert registry.logs[run_id].status == "ok"


def test_stop_cancels_the_run(server: ThreadServer, page: Any, registry: TimedRegistry) -> None:
    start(page, server, "stoppable")
    page.wait_for_function(
        "['left', 'right'].every(p => { const e = document.querySelector(`.panel[data-path=\"${p}\"] .text`);"
        " return e && e.textContent.length > 20; })"
    )
    assert page.is_enabled("#stop")
    lengths = page.eval_on_selector_all(".panel .text", "texts => texts.map(t => t.textContent.length)")
    clicked = time.perf_counter()
    page.click("#stop")
    page.wait_for_function(
        "[...document.querySelectorAll('.panel')].every(p => p.dataset.status === 'cancelled')"
        " && document.querySelector('#run-status').textContent.startsWith('Run cancelled')"
    )
    stopped_in = time.perf_counter() - clicked
    page.wait_for_function("!document.querySelector('#run').disabled && document.querySelector('#stop').disabled")
    for path in ("left", "right"):
        assert page.inner_text(f'.panel[data-path="{path}"] .status').startswith("cancelled")
    assert page.eval_on_selector_all(".group", "groups => groups.map(g => g.dataset.status)") == ["cancelled"]
    assert page.inner_text("#summary .cancelled").startswith("Cancelled: ")  # the stream's own error frame
    after = page.eval_on_selector_all(".panel .text", "texts => texts.map(t => t.textContent.length)")
    page.wait_for_timeout(300)
    final = page.eval_on_selector_all(".panel .text", "texts => texts.map(t => t.textContent.length)")
    assert final == after and all(a >= b for a, b in zip(after, lengths, strict=True))  # nothing streams any more
    assert all(a < len("".join(LONG)) for a in after)
    print(f"\n[browser] Stop -> every panel cancelled in {stopped_in * 1000:.0f} ms")
    assert stopped_in < 3

    (run_id,) = registry.logs  # the server says the run was cancelled, and why each step ended
    registry.wait_finished([run_id])
    log = registry.logs[run_id]
    assert log.status == "cancelled" and log.cancel_requested
    events = registry.events(run_id)
    assert isinstance(events[-1], RunFinished) and events[-1].status == "cancelled"
    done = {e.step: e.response.finish_reason for e in events if isinstance(e, Done)}
    assert done == {"left": "cancelled", "right": "cancelled"}
    finished = {e.step: e.status for e in events if isinstance(e, StepFinished)}
    assert finished == {"left": "cancelled", "right": "cancelled", "pair": "cancelled"}
