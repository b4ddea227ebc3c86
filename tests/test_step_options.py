"""Step options have one declaration: sampling fields and step limits validate the same in `invoke()`
and in a workflow file, and `on_event` is read the same way by a step and by a run.
"""

from __future__ import annotations

from typing import Any

import pytest

from pipeline_ex import llm
from pipeline_ex.errors import ProviderConfigError, WorkflowError
from pipeline_ex.events import Event
from pipeline_ex.llm.options import SamplingFields, StepLimits
from pipeline_ex.llm.providers import GenerationOptions
from pipeline_ex.streaming.resolve import normalize_handlers
from pipeline_ex.workflow import parse_workflow
from pipeline_ex.workflow.schema import Defaults, LLMStep


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"timeout": 0}, "timeout must be a positive number of seconds, got 0"),
        ({"chunk_timeout": "5"}, "chunk_timeout must be a positive number of seconds, got '5'"),
        ({"timeout": True}, "timeout must be a positive number of seconds, got True"),
        ({"retries": -1}, "retries must be a whole number of 0 or more, got -1"),
        ({"retries": 2.0}, "retries must be a whole number of 0 or more, got 2.0"),
        ({"on_handler_error": "ignore"}, "on_handler_error must be 'raise' or 'log', got 'ignore'"),
    ],
)
def test_a_bad_step_limit_in_invoke_names_the_option_and_what_it_must_be(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ProviderConfigError) as raised:
        llm.invoke(prompt="hi", provider="mock", **options)
    assert str(raised.value) == message


def test_good_step_limits_run_the_step() -> None:
    result = llm.invoke(
        prompt="hi", provider="mock", mock_response="fine", timeout=5, retries=1, on_handler_error="log"
    )
    assert result.text == "fine" and result.done.response.finish_reason == "stop"


def test_max_tokens_must_be_positive_in_invoke_as_in_a_workflow() -> None:
    with pytest.raises(ProviderConfigError, match="max_tokens"):
        llm.invoke(prompt="hi", provider="mock", max_tokens=0)
    with pytest.raises(WorkflowError, match="max_tokens"):
        parse_workflow("name: w\nsteps:\n  - {id: a, prompt: hi, max_tokens: 0}\n", mock=True)


def test_the_schema_and_the_providers_share_one_declaration() -> None:
    for model in (GenerationOptions, LLMStep, Defaults):
        for name, field in SamplingFields.model_fields.items():
            assert model.model_fields[name].metadata == field.metadata, (model, name)
    for model in (LLMStep, Defaults):
        assert set(StepLimits.model_fields) <= set(model.model_fields)


@pytest.mark.parametrize(
    ("on_event", "count"),
    [(None, 0), ("console", 1), (print, 1), (["console", print], 2), (("console", print, "null"), 3)],
)
def test_on_event_is_none_one_reference_or_a_list_or_tuple(on_event: Any, count: int) -> None:
    refs = normalize_handlers(on_event)
    assert isinstance(refs, list) and len(refs) == count
    if count:
        assert refs == (list(on_event) if isinstance(on_event, list | tuple) else [on_event])


def test_a_tuple_of_handlers_all_receive_the_step() -> None:
    first: list[Event] = []
    second: list[Event] = []
    llm.invoke(prompt="hi", provider="mock", mock_response="both", on_event=(first.append, second.append))
    assert first == second and [e.type for e in first][-1] == "done"
