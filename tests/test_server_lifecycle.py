"""Lifecycle events over HTTP: `step_started`, `step_finished` and `run_finished` SSE frames for workflows with
`parallel` and `for_each` steps, resuming through them, the other answers that ignore them, and cancelling a
run with `DELETE /runs/{run_id}` (which passes the same guards as every other run endpoint).

Every test serves real HTTP (uvicorn on 127.0.0.1 in a thread) with mock steps and small delays.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from server_kit import (
    JSON_BODY,
    LIFECYCLE_EVENTS,
    RUN_EVENTS,
    SSE,
    TEXT,
    ThreadServer,
    TimedRegistry,
    assert_error,
    check_ids,
    events_of,
    iter_frames,
    run_events_of,
    text_of,
)

from pipeline_ex import Delta, Done, RunFinished, StepFinished, StepStarted
from pipeline_ex.events import ErrorInfo
from pipeline_ex.server import create_app
from pipeline_ex.server.runs import RunLog, event_size
from pipeline_ex.sse import parse_frames

pytestmark = pytest.mark.streaming

TOPICS = ["alpha", "beta", "gamma"]
PROS = [f"p{n} " for n in range(8)]  # 8 chunks, 15 ms apart
CONS = [f"c{n} " for n in range(8)]
LONG = [f"x{n} " for n in range(100)]  # 100 chunks, 30 ms apart: 3 s, far longer than any test waits

FAN = {
    "name": "fan",
    "inputs": {"prompt": {"default": "wrap it up"}},
    "defaults": {"provider": "mock"},
    "steps": [
        {"id": "outline", "prompt": "Outline", "mock_response": ["out", "line"]},
        {
            "id": "views",
            "parallel": [
                {"id": "pros", "prompt": "Pros", "mock_response": PROS, "options": {"delay_ms": 15}},
                {"id": "cons", "prompt": "Cons", "mock_response": CONS, "options": {"delay_ms": 15}},
            ],
        },
        {
            "id": "sections",
            "for_each": TOPICS,
            "as": "topic",
            "max_parallel": 2,
            "steps": [{"id": "draft", "prompt": "Write about {{ topic }}", "options": {"delay_ms": 5}}],
        },
        {"id": "summary", "prompt": "{{ inputs.prompt }}"},
    ],
}
LONG_PAIR = {
    "name": "long_pair",
    "inputs": {"prompt": {"default": "x"}},
    "defaults": {"provider": "mock"},
    "steps": [
        {"id": "intro", "prompt": "Intro", "mock_response": ["In", "tro"]},
        {
            "id": "pair",
            "parallel": [
                {"id": "left", "prompt": "Left", "mock_response": LONG, "options": {"delay_ms": 30}},
                {"id": "right", "prompt": "Right", "mock_response": LONG, "options": {"delay_ms": 30}},
            ],
        },
        {"id": "after", "prompt": "never reached"},
    ],
}
KEEP_GOING = {
    "name": "keep_going",
    "defaults": {"provider": "mock"},
    "steps": [
        {
            "id": "both",
            "on_error": "continue",
            "parallel": [
                {"id": "parse", "type": "python", "callable": "json.loads"},  # json.loads(ctx): TypeError
                {"id": "talk", "prompt": "Talk", "mock_response": ["still ", "here"]},
            ],
        }
    ],
}
LLM_PATHS = {"outline", "pros", "cons", *(f"sections[{i}].draft" for i in range(len(TOPICS))), "summary"}
ALL_PATHS = LLM_PATHS | {"views", "sections"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    served = tmp_path_factory.mktemp("lifecycle") / "workflows"
    served.mkdir()
    for document in (FAN, LONG_PAIR, KEEP_GOING):
        (served / f"{document['name']}.yaml").write_text(json.dumps({"workflow": document}))  # JSON is YAML
    return served


@pytest.fixture(scope="module")
def registry() -> TimedRegistry:
    return TimedRegistry()


@pytest.fixture(scope="module")
def server(folder: Path, registry: TimedRegistry) -> Iterator[ThreadServer]:
    with ThreadServer(create_app(folder, mock=True, api_key="", registry=registry)) as running:
        yield running


@pytest.fixture
def http(server: ThreadServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=20) as client:
        yield client


def run_frames(http: httpx.Client, workflow: str = "fan", **inputs: Any) -> tuple[str, list[dict[str, str]]]:
    with http.stream("POST", f"/workflows/{workflow}/run", json={"inputs": inputs}, headers=SSE) as response:
        assert response.status_code == 200, response.read()
        return response.headers["x-run-id"], list(iter_frames(response.iter_text()))


def check_run(frames: list[dict[str, str]], run_id: str) -> list[Any]:
    """The frames of a whole run of `fan`: every rule a client may rely on. Returns the events."""
    seqs = check_ids(frames, run_id)
    events = run_events_of(frames)
    assert seqs == list(range(1, len(events) + 1))  # one seq counter for every event, lifecycle ones included
    assert [f["event"] for f in frames[-2:]] == ["run_finished", "end"]
    assert frames[-1]["id"] == f"{run_id}:end"
    finished = events[-1]
    assert isinstance(finished, RunFinished) and finished.status == "ok" and finished.error is None
    done = Counter(e.step for e in events if isinstance(e, Done))
    assert done == dict.fromkeys(LLM_PATHS, 1)  # every step instance has exactly one done
    started = {e.step: (e.seq, e.kind) for e in events if isinstance(e, StepStarted)}
    ended = {e.step: (e.seq, e.status) for e in events if isinstance(e, StepFinished)}
    assert set(started) == set(ended) == ALL_PATHS
    assert started["views"][1] == "parallel" and started["sections"][1] == "for_each" and started["pros"][1] == "llm"
    assert {status for _, status in ended.values()} == {"ok"}
    for event in events:  # each step's own events lie between its step_started and its step_finished
        if isinstance(event, Delta | Done):
            assert started[event.step][0] < event.seq < ended[event.step][0], event
    for group, children in (("views", {"pros", "cons"}), ("sections", {p for p in LLM_PATHS if "[" in p})):
        for child in children:
            assert started[group][0] < started[child][0] and ended[child][0] < ended[group][0]
    # the parallel children and the for_each items (two at a time) ran at the same time
    first_done = min(e.seq for e in events if isinstance(e, Done) and e.step in ("pros", "cons"))
    assert started["pros"][0] < first_done and started["cons"][0] < first_done
    assert started["sections[1].draft"][0] < ended["sections[0].draft"][0]
    texts = {path: text_of(e for e in events if getattr(e, "step", None) == path) for path in LLM_PATHS}
    assert texts["pros"] == "".join(PROS) and texts["cons"] == "".join(CONS)
    assert texts["sections[2].draft"] == "Mock reply to: Write about gamma"
    return events


# ---------------------------------------------------------------------------------------------------------
# SSE frames, and resuming through them
# ---------------------------------------------------------------------------------------------------------


def test_sse_frames_carry_lifecycle_events_with_their_ids(http: httpx.Client, registry: TimedRegistry) -> None:
    run_id, frames = run_frames(http)
    events = check_run(frames, run_id)
    assert {f["event"] for f in frames} == {*RUN_EVENTS, "end"}
    assert events == registry.events(run_id)  # the frames are the run log, in its order
    finished = events[-1]
    usage = [e.response.usage for e in events if isinstance(e, Done)]
    assert finished.usage is not None
    assert finished.usage.output_tokens == sum(u.output_tokens for u in usage if u and u.output_tokens)
    # a finished run replays from its log exactly as it streamed
    replay = parse_frames(http.get(f"/runs/{run_id}/events", headers=SSE).text)
    assert [(f["event"], f.get("id"), f["data"]) for f in replay] == [
        (f["event"], f.get("id"), f["data"]) for f in frames
    ]


@pytest.mark.parametrize("where", ["after-a-delta", "after-a-lifecycle-frame"])
def test_resuming_in_the_middle_gives_exactly_the_rest(http: httpx.Client, registry: TimedRegistry, where: str) -> None:
    with http.stream("POST", "/workflows/fan/run?resumable=true", json={}, headers=SSE) as response:
        run_id = response.headers["x-run-id"]
        first: list[dict[str, str]] = []
        for frame in iter_frames(response.iter_text()):
            first.append(frame)
            in_group = frame["event"] == "delta" and json.loads(frame["data"])["step"] in ("pros", "cons")
            if in_group and (where == "after-a-delta" or first[-2]["event"] == "step_started"):
                break  # the parallel group is streaming
        if where == "after-a-lifecycle-frame":
            first.pop()  # stop right after a step_started frame
            assert first[-1]["event"] == "step_started"
    assert not registry.logs[run_id].finished  # the run goes on without its client
    last_id = first[-1]["id"]
    with http.stream("GET", f"/runs/{run_id}/events", headers={**SSE, "Last-Event-ID": last_id}) as resumed:
        assert resumed.status_code == 200
        rest = list(iter_frames(resumed.iter_text()))
    assert "gap" not in {f["event"] for f in rest}
    assert check_ids(rest, run_id)[0] == int(last_id.rpartition(":")[2]) + 1
    assert set(LIFECYCLE_EVENTS) <= {f["event"] for f in rest}
    check_run(first + rest, run_id)  # nothing twice, nothing missing, run_finished last
    # resuming at the run_finished frame says there is nothing more; at the end frame too
    assert http.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": rest[-2]["id"]}).status_code == 204
    assert http.get(f"/runs/{run_id}/events", headers={"Last-Event-ID": rest[-1]["id"]}).status_code == 204


def test_a_small_log_reports_a_gap_then_keeps_the_lifecycle_frames(folder: Path) -> None:
    registry = TimedRegistry(log_capacity=4)
    app = create_app(folder, mock=True, api_key="", registry=registry)
    with ThreadServer(app) as running, httpx.Client(base_url=running.url, timeout=20) as http:
        run_id, frames = run_frames(http)  # the response that started the run sees all of it
        total = len(check_run(frames, run_id))
        resumed = parse_frames(http.get(f"/runs/{run_id}/events", headers=SSE).text)
    assert resumed[0] == {"event": "gap", "data": json.dumps({"from_seq": 1, "to_seq": total - 4})}
    assert check_ids(resumed, run_id) == list(range(total - 3, total + 1))
    assert [f["event"] for f in resumed] == ["gap", "delta", "done", "step_finished", "run_finished", "end"]


def test_lifecycle_events_count_their_error_text_in_the_log_bound() -> None:
    long = ErrorInfo(type="step", message="m" * 5000)
    failed = StepFinished(step="s", run_id="r", seq=1, status="failed", duration_ms=1.0, error=long)
    ok = StepFinished(step="s", run_id="r", seq=2, status="ok", duration_ms=1.0)
    started = StepStarted(step="s", run_id="r", seq=3, kind="llm")
    assert event_size(failed) >= 5000 > event_size(ok) == event_size(started)
    log = RunLog("r", capacity=100, max_bytes=4000)
    log.append(failed)  # too big for the log on its own: dropped as soon as it is in
    log.append(ok)
    assert log.size_bytes <= 4000 and log.evicted_through == 1


# ---------------------------------------------------------------------------------------------------------
# The answers that ignore lifecycle events: plain text, JSON, chat completions
# ---------------------------------------------------------------------------------------------------------


def test_plain_text_and_json_answers_are_unchanged(http: httpx.Client) -> None:
    _, frames = run_frames(http, prompt="finish")
    text = http.post("/workflows/fan/run", json={"inputs": {"prompt": "finish"}}, headers=TEXT)
    assert text.headers["content-type"] == "text/plain; charset=utf-8"
    assert sorted(text.text.split()) == sorted(text_of(events_of(frames)).split())  # every text delta, no frame
    assert "step_started" not in text.text and "{" not in text.text
    answer = http.post("/workflows/fan/run", json={"inputs": {"prompt": "finish"}}, headers=JSON_BODY).json()
    assert set(answer["steps"]) == {"outline", "views", "pros", "cons", "sections", "summary"}
    assert answer["steps"]["summary"]["text"] == "Mock reply to: finish"
    drafts = [item["draft"]["text"] for item in answer["steps"]["sections"]["items"]]
    assert drafts == [f"Mock reply to: Write about {topic}" for topic in TOPICS]


def test_chat_completions_with_the_openai_client(server: ThreadServer, http: httpx.Client) -> None:
    _, frames = run_frames(http, prompt="tell me")
    run_usage = run_events_of(frames)[-1].usage
    assert run_usage is not None
    ai = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=20)
    reply = ai.chat.completions.create(model="fan", messages=[{"role": "user", "content": "tell me"}])
    assert reply.choices[0].message.content == "Mock reply to: tell me"  # the last LLM step's text alone
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None and reply.usage.completion_tokens == run_usage.output_tokens
    chunks = list(
        ai.chat.completions.create(
            model="fan",
            messages=[{"role": "user", "content": "tell me"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert content == "Mock reply to: tell me"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (run_usage.input_tokens, run_usage.output_tokens)
    assert all(c.usage is None for c in chunks[:-1])


def test_a_workflow_whose_llm_steps_are_all_in_groups_is_refused_as_a_chat_model(tmp_path: Path) -> None:
    only_groups = {
        "name": "only_groups",
        "inputs": {"prompt": {"default": "x"}},
        "defaults": {"provider": "mock"},
        "steps": [{"id": "views", "parallel": [{"id": "a", "prompt": "A"}, {"id": "b", "prompt": "B"}]}],
    }
    (tmp_path / "only_groups.yaml").write_text(json.dumps({"workflow": only_groups}))
    with ThreadServer(create_app(tmp_path, mock=True, api_key="")) as running:
        ai = openai.OpenAI(base_url=f"{running.url}/v1", api_key="x", max_retries=0, timeout=20)
        with pytest.raises(openai.BadRequestError) as caught:
            ai.chat.completions.create(model="only_groups", messages=[{"role": "user", "content": "hi"}])
    assert "has none (its LLM steps are inside groups); add a final LLM step" in str(caught.value)


# ---------------------------------------------------------------------------------------------------------
# A step that fails under on_error: continue
# ---------------------------------------------------------------------------------------------------------


def test_an_unexpected_step_failure_is_hidden_behind_a_logged_reference(
    http: httpx.Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pipeline_ex.server")
    run_id, frames = run_frames(http, "keep_going")
    body = json.dumps(frames)
    assert "TypeError" not in body and "Context" not in body
    events = run_events_of(frames)
    finished = {e.step: e for e in events if isinstance(e, StepFinished)}
    assert finished["talk"].status == "ok" and finished["both"].status == "ok"
    failed = finished["parse"]
    assert failed.status == "failed" and failed.error is not None
    reference = failed.error.message.rpartition("reference ")[2].rstrip(")")
    assert failed.error.message == f"the step failed; see the server log (reference {reference})"
    assert isinstance(events[-1], RunFinished) and events[-1].status == "ok"
    logged = [r for r in caplog.records if getattr(r, "reference", None) == reference]
    assert len(logged) == 1 and "TypeError" in logged[0].getMessage() and run_id in logged[0].getMessage()


# ---------------------------------------------------------------------------------------------------------
# DELETE /runs/{run_id}
# ---------------------------------------------------------------------------------------------------------


def read_until_both_stream(frames: Iterator[dict[str, str]]) -> list[dict[str, str]]:
    """Read frames of `long_pair` until both parallel steps have streamed some text."""
    seen: list[dict[str, str]] = []
    streamed: set[str] = set()
    for frame in frames:
        seen.append(frame)
        if frame["event"] == "delta":
            streamed.add(json.loads(frame["data"])["step"])
        if {"left", "right"} <= streamed:
            return seen
    raise AssertionError(f"the run ended before both steps streamed: {seen}")


def test_delete_cancels_a_running_run_and_its_stream_says_so(http: httpx.Client, registry: TimedRegistry) -> None:
    started = time.perf_counter()
    with http.stream("POST", "/workflows/long_pair/run", json={}, headers=SSE) as response:
        run_id = response.headers["x-run-id"]
        frames = iter_frames(response.iter_text())
        first = read_until_both_stream(frames)
        with httpx.Client(base_url=http.base_url, timeout=20) as other:
            cancelled = other.delete(f"/runs/{run_id}")
        rest = list(frames)
    elapsed = time.perf_counter() - started
    assert cancelled.status_code == 200 and cancelled.json() == {"run_id": run_id, "status": "cancelled"}
    assert elapsed < 2.5  # far sooner than the 3 s the steps would stream
    whole = first + rest
    check_ids(whole, run_id)
    assert [f["event"] for f in whole[-2:]] == ["error", "end"]
    assert json.loads(whole[-2]["data"])["type"] == "cancelled"
    events = run_events_of(whole)
    done = {e.step: e for e in events if isinstance(e, Done)}
    assert set(done) == {"intro", "left", "right"}
    assert done["left"].response.finish_reason == done["right"].response.finish_reason == "cancelled"
    finished = {e.step: e.status for e in events if isinstance(e, StepFinished)}
    assert finished == {"intro": "ok", "left": "cancelled", "right": "cancelled", "pair": "cancelled"}
    assert "after" not in {getattr(e, "step", None) for e in events}  # nothing starts after the cancel
    assert isinstance(events[-1], RunFinished) and events[-1].status == "cancelled"
    log = registry.logs[run_id]
    assert log.finished and log.status == "cancelled" and log.events is not None and log.events.cancelled
    # cancelling again changes nothing; the run's log still replays to its end
    assert http.delete(f"/runs/{run_id}").json() == {"run_id": run_id, "status": "cancelled"}
    replay = parse_frames(http.get(f"/runs/{run_id}/events", headers=SSE).text)
    assert [f["event"] for f in replay[-3:]] == ["run_finished", "error", "end"]


def test_delete_of_a_resumable_run_nobody_follows(http: httpx.Client, registry: TimedRegistry) -> None:
    with http.stream("POST", "/workflows/long_pair/run?resumable=true", json={}, headers=SSE) as response:
        run_id = response.headers["x-run-id"]
        read_until_both_stream(iter_frames(response.iter_text()))
    assert not registry.logs[run_id].finished  # its client left; it goes on
    assert http.delete(f"/runs/{run_id}").json() == {"run_id": run_id, "status": "cancelled"}
    frames = parse_frames(http.get(f"/runs/{run_id}/events", headers=SSE).text)
    events = run_events_of(frames)
    assert isinstance(events[-1], RunFinished) and events[-1].status == "cancelled"


def test_delete_of_a_finished_or_unknown_run(http: httpx.Client) -> None:
    run_id, frames = run_frames(http)
    assert http.delete(f"/runs/{run_id}").json() == {"run_id": run_id, "status": "ok"}  # left as it was
    replay = parse_frames(http.get(f"/runs/{run_id}/events", headers=SSE).text)
    assert [f["data"] for f in replay] == [f["data"] for f in frames]
    assert_error(http.delete("/runs/0000000000000000"), 404)
    assert_error(http.post(f"/runs/{run_id}"), 405)


HOSTILE = [
    pytest.param({"Origin": "http://evil.example"}, 403, id="foreign-origin"),
    pytest.param({"Origin": "null"}, 403, id="null-origin"),
    pytest.param({"Sec-Fetch-Site": "cross-site"}, 403, id="cross-site"),
    pytest.param({"Origin": "http://127.0.0.1:1"}, 403, id="another-local-port"),
    pytest.param({"Host": "rebind.test"}, 400, id="dns-rebinding"),
]


@pytest.mark.parametrize(("headers", "status"), HOSTILE)
def test_delete_from_another_site_is_refused_and_the_run_goes_on(
    http: httpx.Client, registry: TimedRegistry, headers: dict[str, str], status: int
) -> None:
    with http.stream("POST", "/workflows/long_pair/run?resumable=true", json={}, headers=SSE) as response:
        run_id = response.headers["x-run-id"]
        read_until_both_stream(iter_frames(response.iter_text()))
    try:
        assert_error(http.delete(f"/runs/{run_id}", headers=headers), status)
        preflight = {**headers, "Access-Control-Request-Method": "DELETE"}
        refused = http.options(f"/runs/{run_id}", headers=preflight)  # a browser would ask this first
        assert refused.status_code >= 400 and "access-control-allow-origin" not in refused.headers
        time.sleep(0.1)
        log = registry.logs[run_id]
        assert not log.finished and not log.cancel_requested
    finally:
        assert http.delete(f"/runs/{run_id}").json()["status"] == "cancelled"  # from its own origin: fine
    same_origin = {"Origin": str(http.base_url).rstrip("/"), "Sec-Fetch-Site": "same-origin"}
    assert http.delete(f"/runs/{run_id}", headers=same_origin).status_code == 200


def test_delete_needs_the_api_key(folder: Path) -> None:
    registry = TimedRegistry()
    app = create_app(folder, mock=True, api_key="lifecycle-secret", registry=registry)
    auth = {"Authorization": "Bearer lifecycle-secret"}
    with ThreadServer(app) as running, httpx.Client(base_url=running.url, timeout=20) as http:
        results: dict[str, Any] = {}

        def follow() -> None:
            with http.stream("POST", "/workflows/long_pair/run", json={}, headers={**SSE, **auth}) as response:
                results["run_id"] = response.headers["x-run-id"]
                results["frames"] = list(iter_frames(response.iter_text()))

        reader = threading.Thread(target=follow)
        reader.start()
        deadline = time.monotonic() + 10
        while "run_id" not in results and time.monotonic() < deadline:
            time.sleep(0.01)
        run_id = results["run_id"]
        assert_error(http.delete(f"/runs/{run_id}"), 401)
        assert_error(http.delete(f"/runs/{run_id}", headers={"Authorization": "Bearer wrong"}), 401)
        assert not registry.logs[run_id].cancel_requested
        assert http.delete(f"/runs/{run_id}", headers=auth).json() == {"run_id": run_id, "status": "cancelled"}
        reader.join(10)
    assert run_events_of(results["frames"])[-1].status == "cancelled"


def test_list_inputs_arrive_as_json_lists_and_feed_a_for_each(tmp_path: Path) -> None:
    topics = {
        "name": "topics",
        "inputs": {"topics": {"type": "list"}},
        "defaults": {"provider": "mock"},
        "steps": [
            {"id": "each", "for_each": "{{ inputs.topics }}", "steps": [{"id": "d", "prompt": "on {{ item }}"}]},
            {"id": "end", "prompt": "done"},
        ],
    }
    (tmp_path / "topics.yaml").write_text(json.dumps({"workflow": topics}))
    with (
        ThreadServer(create_app(tmp_path, mock=True, api_key="")) as running,
        httpx.Client(base_url=running.url, timeout=20) as http,
    ):
        ok = http.post("/workflows/topics/run", json={"inputs": {"topics": ["tides", "reefs"]}}, headers=JSON_BODY)
        as_text = http.post("/workflows/topics/run", json={"inputs": {"topics": '["kelp"]'}}, headers=JSON_BODY)
        wrong = http.post("/workflows/topics/run", json={"inputs": {"topics": "kelp"}}, headers=JSON_BODY)
    assert ok.status_code == 200, ok.text
    items = ok.json()["steps"]["each"]["items"]
    assert [item["d"]["text"] for item in items] == ["Mock reply to: on tides", "Mock reply to: on reefs"]
    assert [i["d"]["text"] for i in as_text.json()["steps"]["each"]["items"]] == ["Mock reply to: on kelp"]
    assert wrong.status_code == 422 and "input 'topics' must be a list written as JSON" in wrong.text
