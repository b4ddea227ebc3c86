"""A `Delta` built on the streaming fast path (`new_delta`) behaves exactly like one built by validation.

The bridge builds one Delta per streamed chunk with `new_delta`, skipping validation. Handlers and user
code then treat it as any pydantic model: compare, hash, copy (with and without changes), dump with
`exclude_unset`, serialise and parse back, pickle. Each of those must give the same result as for
`Delta(content=..., step=..., run_id=..., seq=..., kind=...)`.
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline_ex import Delta, StreamingRecorder, llm
from pipeline_ex.events import EVENT_ADAPTER, new_delta

pytestmark = pytest.mark.streaming

parts = st.fixed_dictionaries(
    {
        "content": st.text(min_size=1, max_size=20),
        "step": st.text(max_size=12),
        "run_id": st.text(max_size=16),
        "seq": st.integers(min_value=-(2**63), max_value=2**63 - 1),
        "kind": st.sampled_from(["text", "reasoning"]),
    }
)
updates = st.fixed_dictionaries(
    {},
    optional={
        "content": st.text(min_size=1, max_size=8),
        "seq": st.integers(min_value=0, max_value=10**6),
        "index": st.integers(min_value=0, max_value=3),
        "kind": st.sampled_from(["text", "reasoning"]),
        "step": st.text(max_size=6),
    },
)


def both(fields: dict[str, Any]) -> tuple[Delta, Delta]:
    """The fast-path Delta and the validated one, from the same parts."""
    fast = new_delta(fields["content"], fields["step"], fields["run_id"], fields["seq"], fields["kind"])
    return fast, Delta(**fields)


def same_model(a: Delta, b: Delta) -> None:
    """Equal by value, by hash, by the fields set, and by every dump."""
    assert type(a) is type(b) is Delta
    assert a == b and b == a
    assert hash(a) == hash(b)
    assert a.model_fields_set == b.model_fields_set
    for unset in (False, True):
        assert a.model_dump(exclude_unset=unset) == b.model_dump(exclude_unset=unset)
        assert a.model_dump(mode="json", exclude_unset=unset) == b.model_dump(mode="json", exclude_unset=unset)
        assert a.model_dump_json(exclude_unset=unset) == b.model_dump_json(exclude_unset=unset)


@given(fields=parts)
def test_a_fast_path_delta_equals_a_validated_one(fields: dict[str, Any]) -> None:
    fast, validated = both(fields)
    same_model(fast, validated)
    assert repr(fast) == repr(validated)
    assert fast.model_fields_set == {"content", "step", "run_id", "seq", "kind"}


@given(fields=parts, update=updates)
def test_model_copy_with_and_without_update(fields: dict[str, Any], update: dict[str, Any]) -> None:
    fast, validated = both(fields)
    same_model(fast.model_copy(), validated.model_copy())
    same_model(fast.model_copy(deep=True), validated.model_copy(deep=True))
    changed_fast, changed_validated = fast.model_copy(update=update), validated.model_copy(update=update)
    same_model(changed_fast, changed_validated)
    for name, value in update.items():
        assert getattr(changed_fast, name) == value
    # copying with changes leaves the original, and every other streamed delta, as it was
    same_model(fast, validated)
    same_model(
        new_delta(fields["content"], "other", "run", 1, fields["kind"]),
        Delta(**{**fields, "step": "other", "run_id": "run", "seq": 1}),
    )


COPIES: dict[str, Callable[[Delta], Delta]] = {
    "copy.copy": copy.copy,
    "copy.deepcopy": copy.deepcopy,
    "pickle": lambda d: pickle.loads(pickle.dumps(d)),
    "EVENT_ADAPTER json": lambda d: EVENT_ADAPTER.validate_json(EVENT_ADAPTER.dump_json(d)),  # type: ignore[misc]
    "EVENT_ADAPTER python": lambda d: EVENT_ADAPTER.validate_python(d.model_dump()),  # type: ignore[misc]
    "model_dump_json": lambda d: Delta.model_validate_json(d.model_dump_json()),
}


@pytest.mark.parametrize("how", COPIES)
@given(fields=parts)
def test_copies_and_round_trips(how: str, fields: dict[str, Any]) -> None:
    fast, validated = both(fields)
    fast_copy, validated_copy = COPIES[how](fast), COPIES[how](validated)
    same_model(fast_copy, validated_copy)
    assert fast_copy == fast and hash(fast_copy) == hash(fast)
    # a copy's fields set is its own: changing the copy leaves the streamed delta alone
    fast_copy.model_fields_set.add("index")
    assert fast.model_fields_set == validated.model_fields_set


@given(fields=parts)
def test_the_fields_set_is_still_frozen_for_every_streamed_delta(fields: dict[str, Any]) -> None:
    fast, _ = both(fields)
    with pytest.raises(TypeError, match="copy"):
        fast.model_fields_set.add("index")
    assert fast.model_fields_set == {"content", "step", "run_id", "seq", "kind"}


def test_deltas_a_real_stream_delivers_support_copy_with_update_and_exclude_unset() -> None:
    recorder = StreamingRecorder()
    llm.invoke(prompt="p", provider="mock", mock_response=["a ", "b"], on_event=recorder)
    first, second = recorder.deltas
    assert first.model_copy(update={"content": "A "}).content == "A "
    assert second.model_dump(exclude_unset=True) == {
        "content": "b",
        "step": "llm",
        "run_id": second.run_id,
        "seq": second.seq,
        "kind": "text",
    }
    assert first.model_dump_json(exclude_unset=True).startswith('{"content":"a "')


def test_each_fast_path_delta_has_fields_of_its_own() -> None:
    first, second = new_delta("a", "s", "r", 1), new_delta("b", "s", "r", 2, "reasoning")
    assert first.__dict__ is not second.__dict__
    object.__setattr__(first, "content", "changed")  # what a handler that pokes at its event could do
    assert (second.content, second.kind) == ("b", "reasoning")
    assert new_delta("c", "s", "r", 3) == Delta(content="c", step="s", run_id="r", seq=3)
