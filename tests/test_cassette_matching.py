"""A cassette replays only for the request it recorded: same prompt and system prompt, model, options, step.

Recordings are made from the real loopback OpenAI server (tests/openai_sse_server.py) with real
`pipeline-ex run` subprocesses, then replayed with the server stopped: with the same inputs the
recording plays back; with another topic, model, option or system prompt the run fails (exit 1) with a
`CassetteError` that names the step, shows what differs and says how to re-record. Under pytest, replay
is instant unless `PIPELINE_REPLAY_SPEED` is set; outside pytest it keeps the recorded timing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from openai_sse_server import OpenAISSEServer

pytestmark = pytest.mark.streaming
live = pytest.mark.live  # these call the loopback OpenAI server
pytest_plugins = ["pytester"]

POEM = ("Owls ", "glide ", "at ", "night.")

WORKFLOW = """
workflow:
  name: poems
  inputs: {{topic: {{default: owls}}}}
  defaults:
    provider: openai
    model: {model}
    temperature: {temperature}
    options: {{api_base_url: "{url}"}}
  steps:
    - id: poem
      system: "{system}"
      prompt: "Write a short poem about {{{{ inputs.topic }}}}."
"""


def write_workflow(
    folder: Path,
    url: str,
    *,
    model: str = "gpt-test-mini",
    temperature: float = 0.2,
    system: str = "You write short poems.",
) -> Path:
    path = folder / "poems.yaml"
    path.write_text(WORKFLOW.format(url=url, model=model, temperature=temperature, system=system))
    return path


def pipeline_ex(folder: Path, mode: str, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    """`pipeline-ex run poems.yaml ARGS` in `folder` with PIPELINE_TEST_MODE=mode (cassettes in folder)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env.update(PIPELINE_TEST_MODE=mode, PIPELINE_CASSETTE_DIR=str(folder / "cassettes"), NO_COLOR="1", **env_extra)
    return subprocess.run(
        [str(Path(sys.executable).with_name("pipeline-ex")), "run", "poems.yaml", *args],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def cassette_lines(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "cassettes" / "poems.jsonl").read_text().splitlines()]


@pytest.fixture
def recorded(tmp_path: Path, openai_server: OpenAISSEServer) -> Path:
    """A project whose poems.yaml was recorded with topic=owls from the loopback server (now stopped)."""
    openai_server.script(pieces=POEM)
    write_workflow(tmp_path, openai_server.url)
    result = pipeline_ex(tmp_path, "record", "--input", "topic=owls")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(POEM) + "\n"
    assert len(openai_server.requests) == 1
    openai_server.stop()  # replays must not need the server
    return tmp_path


@live
def test_the_cassette_records_each_steps_request_readably(recorded: Path) -> None:
    lines = cassette_lines(recorded)
    assert [line["event"]["type"] for line in lines] == ["delta"] * len(POEM) + ["done"]
    assert all("request" not in line for line in lines[:-1])
    assert lines[-1]["request"] == {
        "step": "poem",
        "provider": "openai",
        "model": "gpt-test-mini",
        "messages": [
            {"role": "system", "content": "You write short poems."},
            {"role": "user", "content": "Write a short poem about owls."},
        ],
        "options": {"temperature": 0.2},  # the server's address is not part of the request
    }
    from pipeline_ex import StreamingRecorder

    loaded = StreamingRecorder.load(recorded / "cassettes" / "poems.jsonl")  # still a plain recording
    loaded.assert_complete()
    assert loaded.text == "".join(POEM)


@live
def test_the_same_request_replays_the_recording(recorded: Path) -> None:
    result = pipeline_ex(recorded, "replay", "--input", "topic=owls", "--json", PIPELINE_REPLAY_SPEED="0")
    assert result.returncode == 0, result.stderr
    step = json.loads(result.stdout)["steps"]["poem"]
    assert step["text"] == "".join(POEM)
    assert step["model"] == "gpt-test-mini" and step["finish_reason"] == "stop"


@live
def test_another_topic_is_a_clear_error_not_the_owl_poem(recorded: Path) -> None:
    result = pipeline_ex(recorded, "replay", "--input", "topic=cats")
    assert result.returncode == 1
    assert "Owls" not in result.stdout
    error = result.stderr
    assert "CassetteError" in error or "cassette" in error
    assert f"cassette {recorded / 'cassettes' / 'poems.jsonl'} does not match step 'poem'" in error
    assert "- Write a short poem about owls." in error
    assert "+ Write a short poem about cats." in error
    assert "PIPELINE_TEST_MODE=record" in error and "pytest --pipeline-record" in error
    assert "model:" not in error and "option " not in error and "system prompt" not in error  # only the prompt


@live
@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"model": "gpt-other"}, "model: 'gpt-test-mini' when recorded, 'gpt-other' now"),
        ({"temperature": 0.9}, "option temperature: 0.2 when recorded, 0.9 now"),
        ({"system": "You write limericks."}, "+ You write limericks."),
    ],
    ids=["model", "option", "system prompt"],
)
def test_another_model_option_or_system_prompt_is_a_clear_error(
    recorded: Path, change: dict[str, Any], expected: str
) -> None:
    write_workflow(recorded, "http://127.0.0.1:9/v1", **change)
    result = pipeline_ex(recorded, "replay", "--input", "topic=owls")
    assert result.returncode == 1
    assert "Owls" not in result.stdout
    assert "does not match step 'poem'" in result.stderr
    assert expected in result.stderr
    if "system" in change:
        assert "system prompt:" in result.stderr and "- You write short poems." in result.stderr
    assert "Write a short poem about" not in result.stderr  # the prompt itself did not change


@live
def test_the_server_address_is_not_part_of_the_request(recorded: Path) -> None:
    write_workflow(recorded, "http://127.0.0.1:9/v1")  # nothing listens there; the replay never calls it
    result = pipeline_ex(recorded, "replay", "--input", "topic=owls", PIPELINE_REPLAY_SPEED="0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "".join(POEM) + "\n"


@live
def test_a_cassette_recorded_without_requests_asks_to_be_recorded_again(recorded: Path) -> None:
    path = recorded / "cassettes" / "poems.jsonl"
    old = [{k: v for k, v in line.items() if k != "request"} for line in cassette_lines(recorded)]
    path.write_text("".join(json.dumps(line) + "\n" for line in old))
    result = pipeline_ex(recorded, "replay", "--input", "topic=owls")
    assert result.returncode == 1
    assert "Owls" not in result.stdout
    assert f"cassette {path}" in result.stderr and "without the request" in result.stderr
    assert "re-record it with PIPELINE_TEST_MODE=record" in result.stderr


@live
def test_a_renamed_step_is_a_clear_error(recorded: Path) -> None:
    workflow = recorded / "poems.yaml"
    workflow.write_text(workflow.read_text().replace("id: poem", "id: verse"))
    result = pipeline_ex(recorded, "replay", "--input", "topic=owls")
    assert result.returncode == 1
    assert "no recorded run left for step 'verse' (recorded: poem)" in result.stderr
    assert "PIPELINE_TEST_MODE=record" in result.stderr


# -- replay speed ----------------------------------------------------------------------------------------

TIMED_WORKFLOW = """
workflow:
  name: timed
  steps:
    - id: slow
      provider: mock
      prompt: "count"
      options: {delay_ms: 60, mock_response: ["a ", "b ", "c ", "d"]}
"""


def test_outside_pytest_replay_keeps_the_recorded_timing_by_default(tmp_path: Path) -> None:
    (tmp_path / "poems.yaml").write_text(TIMED_WORKFLOW)
    assert pipeline_ex(tmp_path, "record").returncode == 0

    def replay_ms(**env: str) -> float:
        result = pipeline_ex(tmp_path, "replay", "--json", **env)
        assert result.returncode == 0, result.stderr
        step = json.loads(result.stdout)["steps"]["slow"]
        assert step["text"] == "a b c d"
        return float(step["duration_ms"])

    assert replay_ms() >= 4 * 60 * 0.9  # the four recorded pauses, replayed
    assert replay_ms(PIPELINE_REPLAY_SPEED="0") < 4 * 60 / 2


CASSETTE_TEST = """
import pytest
from pipeline_ex import llm

URL = "{url}"
TOPIC = "owls"


@pytest.mark.cassette("poem")
def test_poem(stream_recorder):
    result = llm.invoke(
        prompt=f"Write about {{TOPIC}}.", provider="openai", api_base_url=URL, step="poem", temperature=0.2
    )
    stream_recorder.assert_complete()
    first_to_last = stream_recorder.offsets_ms[-2] - stream_recorder.offsets_ms[0]
    print(f"\\nTEXT={{result.text}}|ELAPSED_MS={{first_to_last:.1f}}")
"""


def outcome(result: pytest.RunResult) -> tuple[str, float]:
    line = next(line for line in result.stdout.lines if "TEXT=" in line)
    text, elapsed = line.split("TEXT=", 1)[1].split("|ELAPSED_MS=")
    return text, float(elapsed)


@live
def test_the_cassette_marker_matches_the_request_and_replays_instantly(
    pytester: pytest.Pytester, openai_server: OpenAISSEServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIPELINE_REPLAY_SPEED", raising=False)
    openai_server.script(pieces=POEM, delay_s=0.08)
    pytester.makepyfile(test_poem=CASSETTE_TEST.format(url=openai_server.url))
    recorded = pytester.runpytest_subprocess("-s", "--pipeline-record")
    recorded.assert_outcomes(passed=1)
    text, recorded_ms = outcome(recorded)
    # the server pauses 80 ms before each of the last three chunks; on a loaded machine the client can read
    # the first one late, shortening what it measures, so the recording must show at least two pauses
    assert text == "".join(POEM) and recorded_ms >= 2 * 80
    openai_server.stop()

    instant = pytester.runpytest_subprocess("-s")
    instant.assert_outcomes(passed=1)
    instant_text, instant_ms = outcome(instant)
    assert instant_text == text and instant_ms < recorded_ms / 2

    monkeypatch.setenv("PIPELINE_REPLAY_SPEED", "1")
    timed = pytester.runpytest_subprocess("-s")
    timed.assert_outcomes(passed=1)
    assert outcome(timed)[1] >= recorded_ms * 0.9

    monkeypatch.delenv("PIPELINE_REPLAY_SPEED")
    (pytester.path / "test_poem.py").write_text(
        (pytester.path / "test_poem.py").read_text().replace('TOPIC = "owls"', 'TOPIC = "cats"')
    )
    changed = pytester.runpytest_subprocess("-s")
    changed.assert_outcomes(failed=1)
    changed.stdout.fnmatch_lines(
        [
            "*CassetteError: cassette *poem.jsonl does not match step 'poem'*",
            "*- Write about owls.",
            "*+ Write about cats.",
            "*pytest --pipeline-record*",
        ]
    )


def test_replay_mode_from_the_environment_is_instant_inside_tests(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(
        test_env_mode="""
        from pipeline_ex import llm

        def test_slow(stream_recorder):
            llm.invoke(prompt="p", provider="mock", mock_response=["a ", "b ", "c ", "d"], delay_ms=60, step="s")
            first_to_last = stream_recorder.offsets_ms[-2] - stream_recorder.offsets_ms[0]
            print(f"ELAPSED_MS={first_to_last:.1f}")
        """
    )
    monkeypatch.delenv("PIPELINE_REPLAY_SPEED", raising=False)
    monkeypatch.setenv("PIPELINE_CASSETTE_DIR", str(pytester.path / "tapes"))
    monkeypatch.setenv("PIPELINE_TEST_MODE", "record")
    pytester.runpytest_subprocess("-s").assert_outcomes(passed=1)
    assert (pytester.path / "tapes" / "test_slow.jsonl").is_file()

    def elapsed(result: pytest.RunResult) -> float:
        result.assert_outcomes(passed=1)
        return float(result.stdout.str().split("ELAPSED_MS=")[1].split()[0])

    monkeypatch.setenv("PIPELINE_TEST_MODE", "replay")
    assert elapsed(pytester.runpytest_subprocess("-s")) < 3 * 60 / 2
    monkeypatch.setenv("PIPELINE_REPLAY_SPEED", "1")
    assert elapsed(pytester.runpytest_subprocess("-s")) >= 3 * 60 * 0.9


# -- matching in-process, and the diff ------------------------------------------------------------------


def record_and_replay(tmp_path: Path, record: list[str], replay: list[str]) -> list[str]:
    """Record one mock step per prompt (all named `llm`), then replay the prompts in another order."""
    from pipeline_ex import llm
    from pipeline_ex.modes.cassette import Cassette
    from pipeline_ex.modes.session import TestSession, using_session

    path = tmp_path / "tape.jsonl"
    with using_session(TestSession(mode="record", cassette=Cassette(path, record=True))):
        for prompt in record:
            llm.invoke(prompt=prompt, provider="mock")
    with using_session(TestSession(mode="replay", cassette=Cassette(path, record=False), replay_speed=0)):
        return [llm.invoke(prompt=prompt, provider="mock").text for prompt in replay]


def test_runs_of_one_step_replay_by_request_not_by_order(tmp_path: Path) -> None:
    texts = record_and_replay(tmp_path, ["first question", "second question"], ["second question", "first question"])
    assert texts == ["Mock reply to: second question", "Mock reply to: first question"]


def test_a_secret_in_a_prompt_is_redacted_in_the_cassette_and_still_matches(tmp_path: Path) -> None:
    secret = "sk-" + "a1B2c3D4" * 4
    # the recorded reply is redacted too, so that is what replays
    assert record_and_replay(tmp_path, [f"use {secret}"], [f"use {secret}"]) == ["Mock reply to: use ***"]
    assert secret not in (tmp_path / "tape.jsonl").read_text()


def test_the_same_request_twice_replays_twice_then_runs_out(tmp_path: Path) -> None:
    from pipeline_ex.modes.cassette import CassetteError

    assert record_and_replay(tmp_path, ["q", "q"], ["q", "q"]) == ["Mock reply to: q"] * 2
    with pytest.raises(CassetteError, match="no recorded run left for step 'llm'"):
        record_and_replay(tmp_path, ["q"], ["q", "q"])


def test_the_diff_cuts_long_lines_near_the_change_and_shows_spacing() -> None:
    from pipeline_ex.modes.request import text_diff

    long_before = "intro " * 60 + "about owls " + "outro " * 60
    long_after = long_before.replace("owls", "cats")
    lines = text_diff(long_before, long_after).splitlines()
    assert len(lines) == 2 and all(len(line) < 140 for line in lines)
    assert "owls" in lines[0] and lines[0].lstrip().startswith("- …") and lines[0].endswith("…")
    assert "cats" in lines[1] and lines[1].lstrip().startswith("+ …")
    assert text_diff("a  b", "a b").splitlines() == ["    - 'a  b'", "    + 'a b'"]
    many = text_diff("\n".join(map(str, range(40))), "\n".join(str(i * 2) for i in range(40)))
    assert many.splitlines()[-1].strip().startswith("... (") and len(many.splitlines()) == 13


def test_differences_name_each_part_of_the_request() -> None:
    from pipeline_ex.modes.request import StepRequest

    recorded = StepRequest.of(
        "poem", provider="openai", model="a", messages=[("system", "S"), ("user", "P")], options={"seed": 1}
    )
    now = StepRequest.of(
        "poem", provider="anthropic", model="b", messages=[("user", "P2")], options={"top_p": 0.5, "api_base_url": "x"}
    )
    assert not now.matches(recorded)
    assert now.differences(recorded) == [
        "model: 'a' when recorded, 'b' now",
        "messages: system, user when recorded, user now",
        "last message:\n    - P\n    + P2",
        "option seed: 1 when recorded, not set now",
        "option top_p: not set when recorded, 0.5 now",
    ]
    same_but_provider = StepRequest.of(
        "poem", provider="mock", model="a", messages=[("system", "S"), ("user", "P")], options={"seed": 1, "retries": 2}
    )
    assert same_but_provider.matches(recorded) and same_but_provider.differences(recorded) == []


def test_option_values_json_cannot_hold_compare_the_same_in_every_process() -> None:
    from pipeline_ex.modes.request import StepRequest

    class Client:
        """An object whose repr holds its address."""

    def request(client: object) -> StepRequest:
        return StepRequest.of("s", provider="p", model=None, messages=[("user", "u")], options={"client": client})

    assert request(Client()).matches(request(Client()))
    assert request(Client()).options == {"client": f"<{__name__}.{Client.__qualname__}>"}
    assert request(("a", "b")).options == {"client": ["a", "b"]}
