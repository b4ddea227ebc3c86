"""The `generator` provider: any haystack chat generator, named by its dotted path.

In YAML a step gives `generator: {type: pkg.mod.Class, init_parameters: {...}}`. Secrets are written as
`{env: VAR}` (turned into haystack's env-var `Secret`) and never inline: a plain string under a key that
names a secret is an error. The component is built with its own `from_dict`, as haystack would load it
from a pipeline file.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from pipeline_ex.errors import ProviderConfigError
from pipeline_ex.llm.providers.base import BuiltGenerator, ProviderOptions, parse_options
from pipeline_ex.redaction import register_secret_env

if TYPE_CHECKING:
    from pipeline_ex.llm.structured import OutputSchema

_SECRET_KEY = re.compile(r"(api[_-]?key|token|secret|password)$", re.IGNORECASE)


def _env_refs(value: Any, path: str = "") -> list[tuple[str, str]]:
    if isinstance(value, Mapping):
        if set(value) == {"env"} and isinstance(value["env"], str):
            return [(path, value["env"])]
        return [ref for key, item in value.items() for ref in _env_refs(item, f"{path}.{key}" if path else str(key))]
    if isinstance(value, list):
        return [ref for index, item in enumerate(value) for ref in _env_refs(item, f"{path}[{index}]")]
    return []


def _inline_secrets(value: Any, path: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if _SECRET_KEY.search(str(key)) and isinstance(item, str):
                found.append(where)
            found.extend(_inline_secrets(item, where))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found.extend(_inline_secrets(item, f"{path}[{index}]"))
    return found


class GeneratorOptions(ProviderOptions):
    """A haystack chat generator by dotted path, with its `init_parameters`."""

    type: str = Field(pattern=r"^[A-Za-z_][\w.]*[.:][A-Za-z_]\w*$")
    init_parameters: dict[str, Any] = Field(default_factory=dict)
    generation_kwargs: dict[str, Any] | None = None
    """Passed to `run` as they are: sampling option names differ between generators."""

    @model_validator(mode="after")
    def _no_inline_secrets(self) -> GeneratorOptions:
        inline = _inline_secrets(self.init_parameters)
        if inline:
            raise ValueError(
                f"secrets must not be written inline ({', '.join(inline)}); write them as {{env: VARIABLE}}"
            )
        return self

    def key_variables(self) -> tuple[str, ...]:
        """The environment variables named by `{env: VAR}` secrets."""
        return tuple(variable for _, variable in _env_refs(self.init_parameters))


def _to_haystack(value: Any) -> Any:
    if isinstance(value, Mapping):
        if set(value) == {"env"} and isinstance(value["env"], str):
            return {"type": "env_var", "env_vars": [value["env"]], "strict": True}
        return {key: _to_haystack(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_haystack(item) for item in value]
    return value


def import_generator_class(path: str) -> type:
    """Import `pkg.mod.Class` (or `pkg.mod:Class`) and check it looks like a haystack chat generator."""
    module_name, _, class_name = path.replace(":", ".").rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ProviderConfigError(
            f"generator type {path!r} cannot be imported: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(cls, type) or not callable(getattr(cls, "run", None)):
        raise ProviderConfigError(f"generator type {path!r} is not a haystack component class with a run method")
    return cls


def build(
    model: str | None, options: Mapping[str, Any], *, output_schema: OutputSchema | None = None
) -> BuiltGenerator:
    """Build the named generator from its init parameters, as haystack's `from_dict` does.

    An `output_schema` is left to instructions: generators have no common way to ask for one.
    """
    opts: GeneratorOptions = parse_options(GeneratorOptions, "generator", options)
    register_secret_env(*opts.key_variables())
    missing = [variable for variable in opts.key_variables() if not os.environ.get(variable)]
    if missing:
        raise ProviderConfigError(f"generator {opts.type!r} needs the environment variable(s) {', '.join(missing)}")
    cls = import_generator_class(opts.type)
    parameters = _to_haystack(opts.init_parameters)
    if model is not None:
        parameters.setdefault("model", model)
    data = {"type": f"{cls.__module__}.{cls.__qualname__}", "init_parameters": parameters}
    try:
        if callable(getattr(cls, "from_dict", None)):
            generator = cls.from_dict(data)  # type: ignore[attr-defined]
        else:
            from haystack.core.serialization import default_from_dict

            generator = default_from_dict(cls, data)
    except Exception as error:
        raise ProviderConfigError(
            f"generator {opts.type!r} could not be built: {type(error).__name__}: {error}"
        ) from error
    model_name = getattr(generator, "model", None) or model
    return BuiltGenerator(
        generator,
        cls.__name__,
        str(model_name) if model_name else None,
        dict(opts.generation_kwargs or {}),
        structured="instructions" if output_schema else None,
    )
