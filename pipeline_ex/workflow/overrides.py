"""Values that replace a workflow's `defaults:` for one run: `--provider`, `--model` and `--set KEY=VALUE`.

They are an option of the loader (`load_workflow(path, overrides=...)`): they are checked against the
`defaults:` schema first, with messages that name the flag, then merged into the `defaults:` mapping of
the file (and of every file it nests) before the schema validates it, so everything after sees one
workflow whose defaults are the command line's. Errors about a merged value (a handler that cannot be
resolved, a provider whose package is missing) point at the flag instead of a line of the file.

They are defaults, so a step that sets its own value keeps it; the loader warns (`OverrideWarning`) for
each flag that such steps do not follow. A `--provider` other than the file's also drops the file's
`defaults.model` and `defaults.options`, which were written for its provider (and warns about that);
`--model` and `--set options.KEY=VALUE` give the new provider's.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from pipeline_ex.errors import PipelineError, ProviderConfigError, WorkflowError
from pipeline_ex.llm.providers import canonical_provider
from pipeline_ex.workflow.schema import Defaults
from pipeline_ex.workflow.yaml_source import load_yaml

DEPRECATED_KEYS = {"async_stream": "stream", "async_handler": "stream_handler"}
MAPPING_KEYS = ("options", "stream_handler_options")
"""The defaults whose entries are set one at a time: `--set options.n_ctx=4096`."""
TEXT_KEYS = tuple(name for name, info in Defaults.model_fields.items() if info.annotation == (str | None))
"""The keys that take text only (provider, model, system): their value is taken as written, not read as YAML."""
KEYS = tuple(name for name in Defaults.model_fields if name not in DEPRECATED_KEYS)
"""The keys `--set` takes: those of `defaults:`."""
PROVIDER_BOUND_KEYS = ("model", "options")
"""The defaults written for the file's provider, dropped when `--provider` names another one."""

_YAML_HINT = "values are read as YAML: 0.2 is a number, false a boolean, [a, b] a list; quote text that looks like one"


class OverrideError(PipelineError, ValueError):
    """A `--provider`, `--model` or `--set` value that cannot be a workflow default; the message names the flag."""


class OverrideWarning(UserWarning):
    """A command-line default that some steps do not follow, since they set their own value."""


@dataclass(frozen=True)
class Override:
    """One default given on the command line."""

    key: str
    """The key in `defaults:` (`temperature`), or a key and an entry of a mapping (`options.n_ctx`)."""
    value: Any
    flag: str
    """How it was given, for messages: `--set temperature=0.2`, `--provider mock`."""

    @property
    def top(self) -> str:
        """The key in `defaults:` (`options` for `options.n_ctx`)."""
        return self.key.partition(".")[0]

    @property
    def entry(self) -> str | None:
        """The entry of a mapping default (`n_ctx` for `options.n_ctx`), or None."""
        return self.key.partition(".")[2] or None


def _read_value(key: str, text: str, flag: str) -> Any:
    """The value of `--set KEY=TEXT`: text as written for text keys, else one YAML value."""
    if key in TEXT_KEYS:
        return text
    if not text.strip():
        raise OverrideError(f"{flag}: give a value after '=' (null removes the workflow's default)")
    try:
        return load_yaml(text, flag).data
    except WorkflowError as error:
        problem = error.issues[0].message if error.issues else str(error)
        raise OverrideError(f"{flag}: {problem}") from None


def _parse_setting(setting: str) -> Override:
    flag = f"--set {setting}"
    key, sep, text = setting.partition("=")
    key = key.strip()
    if not sep or not key:
        raise OverrideError(f"{flag}: --set expects KEY=VALUE, such as --set temperature=0.2")
    top, dot, entry = key.partition(".")
    if top in DEPRECATED_KEYS:
        raise OverrideError(f"{flag}: {top!r} is deprecated; use --set {DEPRECATED_KEYS[top]}=...")
    if top not in KEYS:
        close = difflib.get_close_matches(top, KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise OverrideError(f"{flag}: unknown key {top!r}{hint}; --set takes the keys of defaults: {', '.join(KEYS)}")
    if dot and (top not in MAPPING_KEYS or not entry):
        if top in MAPPING_KEYS:
            raise OverrideError(f"{flag}: name the entry of {top!r}, such as --set {top}.NAME=VALUE")
        raise OverrideError(f"{flag}: {top!r} is not a mapping; only {' and '.join(MAPPING_KEYS)} take KEY.NAME")
    return Override(key, _read_value(top, text, flag), flag)


def _schema_problems(error: ValidationError, items: Sequence[Override]) -> list[str]:
    """The schema's complaints about the values, one line each, naming the flag that gave the value."""
    by_top = {item.top: item for item in items}
    problems = []
    for found in error.errors():
        top = str(found["loc"][0]) if found["loc"] else ""
        item = by_top.get(top)
        flag = item.flag if item is not None else "--set"
        message = found["msg"].replace("Input should be", "expected").removeprefix("Value error, ")
        shown = repr(found.get("input"))
        shown = shown if len(shown) <= 40 else shown[:37] + "..."
        problems.append(f"{flag}: {message}, got {shown} ({_YAML_HINT})")
    return problems


@dataclass(frozen=True)
class RunOverrides:
    """The defaults a run takes from the command line, checked against the `defaults:` schema."""

    items: tuple[Override, ...] = ()

    @classmethod
    def from_command_line(
        cls, *, provider: str | None = None, model: str | None = None, settings: Sequence[str] = ()
    ) -> RunOverrides:
        """Read `--provider`, `--model` and the `--set KEY=VALUE` settings, in that order.

        :raises OverrideError: naming the flag: an unknown key (with "did you mean"), a value of the wrong
            type, an unknown provider, or a key given twice.
        """
        items: list[Override] = []
        if provider is not None:
            items.append(Override("provider", provider, f"--provider {provider}"))
        if model is not None:
            items.append(Override("model", model, f"--model {model}"))
        items.extend(_parse_setting(setting) for setting in settings)
        seen: dict[str, Override] = {}
        for item in items:
            earlier = seen.get(item.key)
            if earlier is not None:
                raise OverrideError(f"{item.flag}: {item.key!r} is also given by {earlier.flag}; give it once")
            seen[item.key] = item
        overrides = cls(tuple(items))
        try:
            Defaults.model_validate(overrides.merged_into({}))
        except ValidationError as error:
            raise OverrideError("\n".join(_schema_problems(error, items))) from None
        given = overrides.get("provider")
        if given is not None and given.value is not None:
            try:
                canonical_provider(given.value)
            except ProviderConfigError as error:
                raise OverrideError(f"{given.flag}: {error}") from None
        return overrides

    def __bool__(self) -> bool:
        return bool(self.items)

    def __iter__(self) -> Iterator[Override]:
        return iter(self.items)

    def get(self, key: str) -> Override | None:
        """The override of `key` (`provider`, `options.n_ctx`), if one was given."""
        return next((item for item in self.items if item.key == key), None)

    def replaces_provider(self, written: Mapping[str, Any]) -> bool:
        """Whether `--provider` names another provider than the `defaults:` mapping `written` has."""
        given = self.get("provider")
        if given is None:
            return False
        try:
            return canonical_provider(given.value) != canonical_provider(written.get("provider"))
        except ProviderConfigError:  # the file's provider is unknown: the loader reports it if a step uses it
            return True

    def merged_into(self, written: Mapping[str, Any]) -> dict[str, Any]:
        """A `defaults:` mapping: `written` (the file's) with these values put in, a new dict.

        A `--provider` that replaces the file's drops the file's model and provider options (see the module).
        """
        merged = dict(written)
        if self.replaces_provider(written):
            for key in PROVIDER_BOUND_KEYS:
                merged.pop(key, None)
        for item in self.items:
            if item.entry is None:
                merged[item.top] = item.value
            else:
                current = merged.get(item.top)
                merged[item.top] = {**(current if isinstance(current, dict) else {}), item.entry: item.value}
        return merged

    def dropped(self, written: Mapping[str, Any]) -> list[str]:
        """The keys of the file's `defaults:` that `merged_into` drops because `--provider` replaces its provider."""
        if not self.replaces_provider(written):
            return []
        return [key for key in PROVIDER_BOUND_KEYS if written.get(key) is not None and self.get(key) is None]

    def fingerprint(self) -> str:
        """The values as canonical JSON, the same for the same values given in any order (for checkpoints)."""
        import json

        return json.dumps({item.key: item.value for item in self.items}, sort_keys=True)

    def as_arguments(self) -> str:
        """The flags as a command line writes them (for the command that resumes a run), shell-quoted."""
        import shlex

        words: list[str] = []
        for item in self.items:
            if item.flag.startswith("--set "):
                words += ["--set", item.flag.removeprefix("--set ")]
            else:
                flag, _, value = item.flag.partition(" ")
                words += [flag, value]
        return shlex.join(words)


__all__ = ["Override", "OverrideError", "OverrideWarning", "RunOverrides"]
