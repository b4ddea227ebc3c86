"""Golden tests of the workflow loader's error messages: one broken file per case, exact expected text.

Each case is a pair in tests/golden/: `NAME.yaml` (a small broken workflow) and `NAME.expected` (the exact
`str(WorkflowError)` for it). `pipeline-ex validate NAME.yaml` must print that same text on stderr and exit 2. Files are
loaded by a path relative to the repository root (`tests/golden/NAME.yaml`), so the messages are stable.
Cases load with `mock=True` (provider packages not required), except those in `REAL_PROVIDER_CASES`.

Regenerate the expected files after an intended change of wording, then review the diff:

    PIPELINE_EX_REGEN_GOLDEN=1 pytest tests/test_workflow_errors.py

Regeneration leaves the cases in `KNOWN_BUGS` alone: their `.expected` holds the hand-written output the
loader *should* give, and their tests are strict xfails. When one is fixed its test XPASSes (a failure):
remove it from `KNOWN_BUGS`, regenerate, and check that the new output still says what the `.expected` says.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from pipeline_ex.errors import WorkflowError
from pipeline_ex.workflow import load_workflow

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"
REGEN = os.environ.get("PIPELINE_EX_REGEN_GOLDEN", "").strip() not in ("", "0")

REQUIRED_CASES = {
    "bad_indent",
    "unknown_key",
    "wrong_type",
    "missing_prompt",
    "unknown_handler",
    "missing_provider_extra",
    "duplicate_step_id",
    "unknown_step_reference",
    "later_step_reference",
    "legacy_conflict",
    "bad_handler_option",
}

REAL_PROVIDER_CASES = {"missing_provider_extra"}
"""Cases checked for a real run (mock=False): provider packages must be installed."""

KNOWN_BUGS: dict[str, str] = {}
"""Cases whose `.expected` states the output the loader should give but does not yet (strict xfails)."""

MULTI_LINE_BUG = "library bug: a handler issue spans several lines"
MULTI_LINE_CASES: set[str] = set()

ISSUE_LINE = re.compile(r"^tests/golden/(?P<name>\w+)\.yaml:(?P<line>\d+):(?P<col>\d+): (?P<rest>.+)$")


def _cases() -> list[str]:
    return sorted(path.stem for path in GOLDEN.glob("*.yaml"))


def _param(name: str, bugs: dict[str, str]) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=bugs[name])] if name in bugs else []
    return pytest.param(name, id=name, marks=marks)


def _relative(name: str) -> str:
    return f"tests/golden/{name}.yaml"


def _expected(name: str) -> str:
    path = GOLDEN / f"{name}.expected"
    if not path.exists():
        pytest.fail(f"{path} is missing; run with PIPELINE_EX_REGEN_GOLDEN=1 to create it")
    return path.read_text(encoding="utf-8").rstrip("\n")


def _actual(name: str) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # no golden case is a mere deprecation
        with pytest.raises(WorkflowError) as caught:
            load_workflow(_relative(name), mock=name not in REAL_PROVIDER_CASES)
    return str(caught.value)


@pytest.fixture
def at_repo_root(monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Path:
    callspec = getattr(request.node, "callspec", None)
    name = callspec.params.get("name") if callspec is not None else None
    if name in REAL_PROVIDER_CASES:
        request.getfixturevalue("without_anthropic")  # the case is a provider extra that is not installed
    if name in REAL_PROVIDER_CASES and os.environ.get("PIPELINE_TEST_MODE", "").strip().lower() in ("mock", "replay"):
        pytest.skip("the test run is in mock or replay mode, so a real-run load cannot be checked")
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("PIPELINE_TEST_MODE", raising=False)
    return REPO


def test_every_required_case_has_a_golden_pair() -> None:
    cases = set(_cases())
    assert not REQUIRED_CASES - cases, f"missing golden cases: {sorted(REQUIRED_CASES - cases)}"
    if not REGEN:
        missing = [name for name in cases if not (GOLDEN / f"{name}.expected").exists()]
        assert not missing, f"no .expected for {missing}; run with PIPELINE_EX_REGEN_GOLDEN=1"
    assert set(KNOWN_BUGS) <= cases


@pytest.mark.parametrize("name", [_param(name, KNOWN_BUGS) for name in _cases()])
def test_error_text_matches_golden(name: str, at_repo_root: Path) -> None:
    actual = _actual(name)
    if REGEN and name not in KNOWN_BUGS:
        (GOLDEN / f"{name}.expected").write_text(actual + "\n", encoding="utf-8")
    assert actual == _expected(name)


def _cli() -> list[str]:
    script = Path(sys.executable).with_name("pipeline-ex")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pipeline_ex"]


@pytest.mark.parametrize("name", _cases())
def test_validate_command_prints_the_same_text_and_exits_2(name: str, at_repo_root: Path) -> None:
    """`pipeline-ex validate FILE` prints exactly str(WorkflowError) on stderr (so, the golden text) and exits 2."""
    env = {k: v for k, v in os.environ.items() if k != "PIPELINE_TEST_MODE"}  # read after the fixture's PYTHONPATH
    flags = [] if name in REAL_PROVIDER_CASES else ["--mock"]
    result = subprocess.run(
        [*_cli(), "validate", *flags, _relative(name)],
        cwd=at_repo_root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert result.stderr == _actual(name) + "\n"


@pytest.mark.parametrize("name", [_param(name, {n: MULTI_LINE_BUG for n in MULTI_LINE_CASES}) for name in _cases()])
def test_every_issue_is_one_line_naming_file_line_column(name: str, at_repo_root: Path) -> None:
    text = _actual(name)
    for line in text.splitlines():
        match = ISSUE_LINE.match(line)
        assert match is not None, f"not FILE:LINE:COL: ...: {line!r}"
        assert match["name"] == name
        assert int(match["line"]) >= 1 and int(match["col"]) >= 1


@pytest.mark.parametrize("name", sorted(set(_cases()) - {"bad_indent"}))
def test_issues_past_yaml_parsing_name_a_key_path(name: str, at_repo_root: Path) -> None:
    """Every issue found after the YAML parsed carries the key path of what it is about."""
    with pytest.raises(WorkflowError) as caught:
        load_workflow(_relative(name), mock=name not in REAL_PROVIDER_CASES)
    for issue in caught.value.issues:
        assert issue.location.file == _relative(name)
        assert issue.location.key is not None and issue.location.key.startswith("workflow")
        assert str(issue).startswith(f"{_relative(name)}:{issue.location.line}:{issue.location.column}: ")


def test_golden_yaml_files_contain_what_the_case_names_say() -> None:
    """Guard against a golden file drifting away from the mistake it is meant to show."""
    text = {name: (GOLDEN / f"{name}.yaml").read_text(encoding="utf-8") for name in REQUIRED_CASES}
    assert "promt:" in text["unknown_key"]
    assert "max_tokens: many" in text["wrong_type"] and "stream: maybe" in text["wrong_type"]
    assert "prompt:" not in text["missing_prompt"]
    assert "stream_handler: consol\n" in text["unknown_handler"]
    assert "provider: claude" in text["missing_provider_extra"]
    assert "steps.nope" in text["unknown_step_reference"]
    assert "stream: true" in text["legacy_conflict"] and "async_stream: false" in text["legacy_conflict"]
    assert "stream_handler_options: {colour: true}" in text["bad_handler_option"]
