"""Stream handlers: every accepted form, resolution errors, the built-ins, and handler failures."""

from __future__ import annotations

import asyncio
import importlib
import io
import json
import os
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

from pipeline_ex import (
    BufferHandler,
    CallbackHandler,
    ConsoleHandler,
    Context,
    Delta,
    Done,
    FileHandler,
    HandlerError,
    HandlerResolutionError,
    NullHandler,
    Response,
    StreamingRecorder,
    StreamTruncatedError,
    legacy_handler,
    llm,
    resolve_handler,
)
from pipeline_ex.events import EVENT_ADAPTER
from pipeline_ex.streaming import ELIXIR_ALIASES, HandlerSpec, short_names
from pipeline_ex.streaming import resolve as resolve_module

BUILTIN_NAMES = ["console", "file", "jsonl", "buffer", "null", "recorder", "webhook"]
BUILTIN_LIST = "short names: " + ", ".join(BUILTIN_NAMES)
# Top-level package names the tests below write into their temporary project directory.
TEST_PACKAGES = {"handlers", "myhandlers_pkg", "emptyhandlers", "brokendep_handlers", "ep_shout_handlers"}


# -- helpers -------------------------------------------------------------------------------------


def run(handlers, chunks=("Hello", " brave", " new", " world"), **kwargs):
    """Run a mock step that streams exactly `chunks`."""
    return llm.invoke(prompt="say hello", provider="mock", mock_response=list(chunks), on_event=handlers, **kwargs)


async def arun(handlers, chunks=("Hello", " brave", " new", " world"), **kwargs):
    return await llm.ainvoke(
        prompt="say hello", provider="mock", mock_response=list(chunks), on_event=handlers, **kwargs
    )


def write(root: Path, relpath: str, source: str) -> Path:
    path = root / relpath
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source), encoding="utf-8")
    importlib.invalidate_caches()
    return path


def contents(events):
    return [e.content if isinstance(e, Delta) else "<done>" for e in events]


def bound_instance(spec: HandlerSpec):
    """The handler object a spec binds for one run (its `handle_event` is a bound method)."""
    return spec.bind().fn.__self__


class TtyIO(io.StringIO):
    """A text stream that claims to be a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def project_dir(tmp_path, monkeypatch):
    """An empty project directory as the cwd; sys.path and the modules imported from it are restored after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in list(sys.modules):
        if name.split(".")[0] in TEST_PACKAGES:
            monkeypatch.delitem(sys.modules, name)
    yield tmp_path
    for name in list(sys.modules):
        if name.split(".")[0] in TEST_PACKAGES:
            del sys.modules[name]


# -- handler forms -------------------------------------------------------------------------------


@pytest.mark.streaming
def test_module_handler_resolves_from_the_current_directory(project_dir):
    write(project_dir, "handlers/__init__.py", "")
    write(
        project_dir,
        "handlers/word_count.py",
        """
        from pipeline_ex import Delta, Done

        WORDS = []
        DONES = []

        def handle_event(event):
            if isinstance(event, Delta):
                WORDS.extend(event.content.split())
            elif isinstance(event, Done):
                DONES.append(event)
        """,
    )
    assert str(project_dir) not in sys.path

    spec = resolve_handler("handlers.word_count")

    assert str(project_dir) in sys.path or "" in sys.path  # resolution made the cwd importable
    module = sys.modules["handlers.word_count"]
    assert Path(module.__file__).parent == project_dir / "handlers"
    assert spec.name == "handlers.word_count"
    assert spec.is_async is False

    first = run("handlers.word_count", chunks=["one ", "two ", "three"])
    second = run(spec, chunks=["four"])

    # A module handler is the same function every run, so module state accumulates.
    assert module.WORDS == ["one", "two", "three", "four"]
    assert [d.response.text for d in module.DONES] == ["one two three", "four"]
    assert len(module.DONES) == 2
    assert module.DONES[0] is first.done
    assert module.DONES[1] is second.done


@pytest.mark.streaming
def test_class_handler_gets_a_fresh_instance_per_run():
    class Counting:
        instances: list[Counting] = []

        def __init__(self):
            self.events = []
            Counting.instances.append(self)

        def handle_event(self, event):
            self.events.append(event)

    spec = resolve_handler(Counting)
    assert spec.is_async is False
    assert Counting.instances == []  # resolving builds nothing

    first = run(spec, chunks=["a", "b"])
    second = run(spec, chunks=["c"])
    third = run(Counting, chunks=["d", "e", "f"])

    assert len(Counting.instances) == 3
    one, two, three = Counting.instances
    assert contents(one.events) == ["a", "b", "<done>"]
    assert contents(two.events) == ["c", "<done>"]
    assert contents(three.events) == ["d", "e", "f", "<done>"]
    assert [one.events[-1], two.events[-1], three.events[-1]] == [first.done, second.done, third.done]


@pytest.mark.streaming
def test_function_handler():
    received = []

    def on_event(event):
        received.append(event)

    spec = resolve_handler(on_event)
    assert spec.is_async is False
    assert spec.name.endswith("on_event")

    result = run(on_event, chunks=["x", "y"])

    assert [type(e) for e in received] == [Delta, Delta, Done]
    assert received[-1] is result.done
    assert result.text == "xy"


@pytest.mark.streaming
def test_async_function_handler_in_invoke():
    received = []

    async def on_event(event):
        await asyncio.sleep(0)
        received.append(event)

    assert resolve_handler(on_event).is_async is True

    result = run(on_event, chunks=["x", "y"])

    assert contents(received) == ["x", "y", "<done>"]
    assert received[-1] == result.done


@pytest.mark.streaming
async def test_async_function_handler_in_ainvoke():
    received = []

    async def on_event(event):
        await asyncio.sleep(0)
        received.append(event)

    result = await arun(on_event, chunks=["x", "y", "z"])

    assert contents(received) == ["x", "y", "z", "<done>"]
    assert received[-1] == result.done


@pytest.mark.streaming
async def test_invoke_with_an_async_handler_inside_a_running_loop_awaits_it_on_a_worker_thread(monkeypatch):
    monkeypatch.setattr("pipeline_ex.running_loop._warned", set())  # the warning is given once per process
    seen = []
    loops = set()

    async def on_event(event):
        await asyncio.sleep(0)
        loops.add(asyncio.get_running_loop())
        seen.append(event)

    with pytest.warns(RuntimeWarning, match=r"use 'await pipeline_ex\.ainvoke"):
        result = run(on_event)
    assert [e.content for e in seen if isinstance(e, Delta)] == ["Hello", " brave", " new", " world"]
    assert seen[-1] == result.done
    assert len(loops) == 1 and asyncio.get_running_loop() not in loops  # the worker thread's own loop


@pytest.mark.streaming
async def test_async_class_handler_gets_a_fresh_instance_per_run():
    class AsyncCounting:
        instances: list[AsyncCounting] = []

        def __init__(self):
            self.events = []
            AsyncCounting.instances.append(self)

        async def handle_event(self, event):
            await asyncio.sleep(0)
            self.events.append(event)

    spec = resolve_handler(AsyncCounting)
    assert spec.is_async is True

    await arun(spec, chunks=["a"])
    await arun(spec, chunks=["b", "c"])

    assert [contents(i.events) for i in AsyncCounting.instances] == [["a", "<done>"], ["b", "c", "<done>"]]


@pytest.mark.streaming
def test_object_instance_handler_is_reused_across_runs():
    class Collector:
        def __init__(self):
            self.events = []

        def handle_event(self, event):
            self.events.append(event)

    collector = Collector()
    spec = resolve_handler(collector)
    assert spec.name.endswith(".<locals>.Collector instance")
    assert spec.bind().fn == collector.handle_event

    run(collector, chunks=["a"])
    run(spec, chunks=["b"])

    assert contents(collector.events) == ["a", "<done>", "b", "<done>"]


@pytest.mark.streaming
def test_list_of_handlers_receive_the_same_events_in_the_same_order():
    seen_by_function = []
    order = []
    buffer = BufferHandler()

    class Recording:
        instances: list[Recording] = []

        def __init__(self):
            self.events = []
            Recording.instances.append(self)

        def handle_event(self, event):
            order.append(("class", event.seq))
            self.events.append(event)

    def function(event):
        order.append(("function", event.seq))
        seen_by_function.append(event)

    result = run([function, buffer, Recording], chunks=["a", "b", "c"])

    (instance,) = Recording.instances
    assert len(buffer.events) == 4
    for a, b, c in zip(seen_by_function, buffer.events, instance.events, strict=True):
        assert a is b is c
    assert buffer.done is result.done
    # each event reaches every handler, in the order the handlers were given, before the next event
    assert order == [(who, seq) for seq in [e.seq for e in buffer.events] for who in ("function", "class")]


@pytest.mark.streaming
async def test_mixed_sync_and_async_handler_list_in_ainvoke():
    order = []

    def sync_handler(event):
        order.append(("sync", event.seq))

    async def async_handler(event):
        await asyncio.sleep(0)
        order.append(("async", event.seq))

    buffer = BufferHandler()
    await arun([async_handler, buffer, sync_handler], chunks=["a", "b"])

    seqs = [e.seq for e in buffer.events]
    assert len(seqs) == 3
    assert order == [(who, seq) for seq in seqs for who in ("async", "sync")]


@pytest.mark.streaming
def test_colon_and_dotted_paths_name_the_same_class(project_dir):
    write(project_dir, "myhandlers_pkg/__init__.py", "")
    write(
        project_dir,
        "myhandlers_pkg/mod.py",
        """
        class Name:
            instances = []

            def __init__(self, prefix=">"):
                self.prefix = prefix
                self.texts = []
                Name.instances.append(self)

            def handle_event(self, event):
                if event.type == "delta":
                    self.texts.append(self.prefix + event.content)
        """,
    )

    colon = resolve_handler("myhandlers_pkg.mod:Name", {"prefix": "#"})
    dotted = resolve_handler("myhandlers_pkg.mod.Name")

    cls = sys.modules["myhandlers_pkg.mod"].Name
    assert colon.name == "myhandlers_pkg.mod:Name"
    assert dotted.name == "myhandlers_pkg.mod.Name"

    run(colon, chunks=["a", "b"])
    run("myhandlers_pkg.mod.Name", chunks=["c"])
    run(dotted, chunks=["d"])

    assert all(type(i) is cls for i in cls.instances)
    assert [i.texts for i in cls.instances] == [["#a", "#b"], [">c"], [">d"]]


def test_misspelt_attribute_in_a_path_suggests_the_right_one(project_dir):
    write(project_dir, "myhandlers_pkg/__init__.py", "")
    write(project_dir, "myhandlers_pkg/mod.py", "class Name:\n    def handle_event(self, event):\n        pass\n")

    with pytest.raises(HandlerResolutionError) as info:
        resolve_handler("myhandlers_pkg.mod:Nmae")

    message = str(info.value)
    assert "myhandlers_pkg.mod has no attribute 'Nmae'" in message
    assert "did you mean Name?" in message
    assert isinstance(info.value.cause, AttributeError)


@pytest.mark.streaming
def test_legacy_tuple_handler():
    received = []

    def old_style(item):
        received.append(item)

    with pytest.warns(DeprecationWarning, match=r"legacy tuple handler .*old_style") as caught:
        spec = legacy_handler(old_style)
    assert caught[0].filename == __file__  # attributed to the caller

    result = run(spec, chunks=["Hi", " there"])

    assert received == [("chunk", "Hi"), ("chunk", " there"), ("complete", result.response)]
    assert isinstance(received[-1][1], Response)
    assert received[-1][1].text == "Hi there"


@pytest.mark.streaming
async def test_async_legacy_tuple_handler_in_ainvoke():
    received = []

    async def old_style(item):
        await asyncio.sleep(0)
        received.append(item)

    with pytest.warns(DeprecationWarning):
        spec = legacy_handler(old_style)
    assert spec.is_async is True

    result = await arun(spec, chunks=["a", "b"])

    assert received == [("chunk", "a"), ("chunk", "b"), ("complete", result.response)]


def test_legacy_alias_name_warns_and_maps_to_console():
    with pytest.warns(
        DeprecationWarning,
        match=r"'Pipeline\.AsyncStreaming\.ConsoleHandler' is deprecated; use 'Pipeline\.Streaming\.ConsoleHandler'",
    ):
        spec = resolve_handler("Pipeline.AsyncStreaming.ConsoleHandler")

    assert spec.name == "console"
    assert type(bound_instance(spec)) is ConsoleHandler


@pytest.mark.streaming
def test_legacy_alias_name_works_in_invoke():
    with pytest.warns(DeprecationWarning, match="AsyncStreaming.NullHandler"):
        result = run("Pipeline.AsyncStreaming.NullHandler", chunks=["a"])
    assert result.text == "a"


def test_legacy_alias_warning_is_attributed_to_the_caller():
    with pytest.warns(DeprecationWarning) as caught:
        resolve_handler("Pipeline.AsyncStreaming.ConsoleHandler")
    assert caught[0].filename == __file__


@pytest.mark.parametrize(
    ("alias", "cls"),
    [
        ("Pipeline.Streaming.ConsoleHandler", ConsoleHandler),
        ("Pipeline.Streaming.BufferHandler", BufferHandler),
        ("Pipeline.Streaming.NullHandler", NullHandler),
        ("Pipeline.TestMode.StreamingRecorder", StreamingRecorder),
    ],
)
def test_elixir_alias_maps_to_the_builtin_without_a_warning(alias, cls):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        spec = resolve_handler(alias)
    assert spec.name == ELIXIR_ALIASES[alias]
    assert type(bound_instance(spec)) is cls


@pytest.mark.streaming
def test_entry_point_handler_resolves_by_short_name(tmp_path, monkeypatch, project_dir):
    site = tmp_path / "site"
    write(
        site,
        "ep_shout_handlers.py",
        """
        SHOUTED = []

        class ShoutHandler:
            def __init__(self, suffix="!"):
                self.suffix = suffix

            def handle_event(self, event):
                if event.type == "delta":
                    SHOUTED.append(event.content.upper() + self.suffix)
        """,
    )
    write(site, "shout_handlers-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: shout-handlers\nVersion: 0.1\n")
    write(
        site,
        "shout_handlers-0.1.dist-info/entry_points.txt",
        "[pipeline_ex.handlers]\nshout = ep_shout_handlers:ShoutHandler\n",
    )
    assert "shout" not in short_names()
    monkeypatch.syspath_prepend(str(site))

    assert short_names() == [*BUILTIN_NAMES, "shout"]
    spec = resolve_handler("shout", {"suffix": "?"})
    assert spec.name == "shout"
    run(spec, chunks=["hi", "you"])
    run("shout", chunks=["x"])

    assert sys.modules["ep_shout_handlers"].SHOUTED == ["HI?", "YOU?", "X!"]
    with pytest.raises(HandlerResolutionError, match=BUILTIN_LIST + ", shout"):
        resolve_handler("shuot")


# -- resolution errors ---------------------------------------------------------------------------


def test_unknown_short_name_lists_the_short_names_and_suggests_one():
    with pytest.raises(HandlerResolutionError) as info:
        resolve_handler("consle")

    error = info.value
    message = str(error)
    assert message.splitlines()[0] == "cannot use stream handler 'consle': no handler has this short name"
    assert BUILTIN_LIST in message
    assert "hint: did you mean console?" in message
    assert error.reference == "consle"
    assert error.short_names == tuple(BUILTIN_NAMES)


def test_unknown_short_name_is_reported_before_the_step_runs():
    with pytest.raises(HandlerResolutionError, match="did you mean jsonl"):
        run("json")


def test_missing_module_names_the_cause_and_gives_a_hint(project_dir):
    with pytest.raises(HandlerResolutionError) as info:
        resolve_handler("nosuchpkg_zz9.handler")

    error = info.value
    message = str(error)
    assert "'nosuchpkg_zz9.handler': import failed" in message
    assert "cause: ModuleNotFoundError: No module named 'nosuchpkg_zz9'" in message
    assert "hint: check the spelling; if 'nosuchpkg_zz9' is a package, install it" in message
    assert BUILTIN_LIST in message
    assert isinstance(error.cause, ModuleNotFoundError)


def test_missing_dependency_of_a_handler_module_is_named_in_the_hint(project_dir):
    write(project_dir, "brokendep_handlers/__init__.py", "")
    write(project_dir, "brokendep_handlers/mod.py", "import not_installed_dep_zz9\n")

    with pytest.raises(HandlerResolutionError) as info:
        resolve_handler("brokendep_handlers.mod:Handler")

    message = str(info.value)
    assert "cause: ModuleNotFoundError: No module named 'not_installed_dep_zz9'" in message
    assert "hint: the handler imports 'not_installed_dep_zz9', which is not installed" in message


def test_module_without_handle_event_is_rejected(project_dir):
    write(project_dir, "emptyhandlers/__init__.py", "")
    write(project_dir, "emptyhandlers/nothing.py", "def handle(event):\n    pass\n")

    with pytest.raises(HandlerResolutionError) as info:
        resolve_handler("emptyhandlers.nothing")

    message = str(info.value)
    assert "module emptyhandlers.nothing has no handle_event(event) function" in message
    assert "hint: define a module-level handle_event(event)" in message


def test_unknown_console_option_suggests_the_right_one():
    with pytest.raises(HandlerResolutionError) as info:
        resolve_handler("console", {"colour": True})

    message = str(info.value)
    assert "invalid stream_handler_options: unknown option 'colour' (did you mean 'color'?)" in message
    assert "hint: ConsoleHandler takes: to, summary, color, show_reasoning" in message


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"summary": "maybe"}, "option 'summary': Input should be a valid boolean"),
        ({"to": "printer"}, "option 'to': Input should be 'stdout' or 'stderr'"),
    ],
)
def test_invalid_console_option_value(options, expected):
    with pytest.raises(HandlerResolutionError, match="invalid stream_handler_options") as info:
        resolve_handler("console", options)
    assert expected in str(info.value)


def test_required_file_option_missing():
    with pytest.raises(HandlerResolutionError, match=r"option 'path': Field required"):
        resolve_handler("file")


def test_options_for_a_function_handler_are_rejected():
    def on_event(event):
        pass

    with pytest.raises(HandlerResolutionError, match="stream_handler_options are only accepted by class handlers"):
        resolve_handler(on_event, {"color": True})


def test_object_that_is_not_a_handler_is_rejected():
    with pytest.raises(HandlerResolutionError, match="int object is not a handler"):
        resolve_handler(42)


def test_empty_reference_is_rejected():
    with pytest.raises(HandlerResolutionError, match="the handler reference is empty"):
        resolve_handler("   ")


# -- sync or async is decided once ---------------------------------------------------------------


class _SyncMethod:
    def handle_event(self, event):
        pass


class _AsyncMethod:
    async def handle_event(self, event):
        pass


class _AsyncCallable:
    async def __call__(self, event):
        pass


def _sync_fn(event):
    pass


async def _async_fn(event):
    pass


@pytest.mark.parametrize(
    ("reference", "is_async"),
    [
        (_sync_fn, False),
        (_async_fn, True),
        (_SyncMethod, False),
        (_AsyncMethod, True),
        (_SyncMethod(), False),
        (_AsyncMethod(), True),
        (_AsyncCallable(), True),
        ("buffer", False),
    ],
)
def test_handler_spec_records_whether_the_handler_is_async(reference, is_async):
    spec = resolve_handler(reference)
    assert spec.is_async is is_async
    assert spec.bind().is_async is is_async


@pytest.mark.streaming
def test_sync_or_async_is_inspected_once_at_resolution(monkeypatch):
    calls = []
    real = resolve_module._is_async

    def counting(fn):
        calls.append(fn)
        return real(fn)

    monkeypatch.setattr(resolve_module, "_is_async", counting)
    buffer = BufferHandler()
    spec = resolve_handler(buffer)
    assert len(calls) == 1

    run(spec, chunks=[f"{i} " for i in range(50)])
    run(spec, chunks=["again"])

    assert len(calls) == 1
    assert len(buffer.dones) == 2


# -- ConsoleHandler ------------------------------------------------------------------------------


@pytest.mark.streaming
def test_console_handler_streams_text_to_stdout_and_one_summary_line_to_stderr(capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    result = run("console", chunks=["Hello", " world", "\n"])

    captured = capsys.readouterr()
    assert captured.out == "Hello world\n"
    lines = captured.err.splitlines()
    assert len(lines) == 1
    summary = lines[0]
    assert summary.startswith("[llm] stop")
    usage = result.response.usage
    assert f"{usage.output_tokens} tokens ({usage.input_tokens} in)" in summary
    assert "\x1b[" not in captured.out + captured.err  # not a terminal: no colour


@pytest.mark.streaming
def test_console_handler_ends_an_unterminated_reply_with_a_newline(capsys):
    run("console", chunks=["no", " newline"])
    assert capsys.readouterr().out == "no newline\n"


@pytest.mark.streaming
def test_console_handler_summary_off(capsys):
    run(resolve_handler("console", {"summary": False}), chunks=["a\n"])
    captured = capsys.readouterr()
    assert captured.out == "a\n"
    assert captured.err == ""


@pytest.mark.streaming
def test_console_handler_summary_names_an_error(capsys):
    with pytest.raises(StreamTruncatedError):
        run("console", chunks=["a"], finish_reason=None)
    captured = capsys.readouterr()
    assert captured.out == "a\n"
    (summary,) = captured.err.splitlines()
    assert summary.startswith("[llm] error (truncated: ")
    assert "tokens" in summary


@pytest.mark.streaming
def test_console_handler_to_stderr(capsys):
    run(resolve_handler("console", {"to": "stderr"}), chunks=["to ", "stderr\n"])
    captured = capsys.readouterr()
    assert captured.out == ""
    first, summary, *rest = captured.err.split("\n")
    assert first == "to stderr"
    assert summary.startswith("[llm] stop") and "tokens" in summary
    assert rest == [""]


@pytest.mark.streaming
def test_console_handler_colours_a_terminal_unless_no_color(capsys, monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    terminal = TtyIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    run("console", chunks=["a\n"])
    assert terminal.getvalue().startswith("\x1b[2m[llm] stop")
    assert terminal.getvalue().endswith("\x1b[0m\n")

    monkeypatch.setenv("NO_COLOR", "1")
    terminal = TtyIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    run("console", chunks=["a\n"])
    assert terminal.getvalue().startswith("[llm] stop")
    assert "\x1b[" not in terminal.getvalue()
    assert capsys.readouterr().out == "a\na\n"


@pytest.mark.streaming
def test_console_handler_color_option_overrides_detection(capsys, monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    run(resolve_handler("console", {"color": True}), chunks=["a\n"])
    assert "\x1b[2m[llm] stop" in capsys.readouterr().err

    monkeypatch.delenv("NO_COLOR")
    terminal = TtyIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    run(resolve_handler("console", {"color": False}), chunks=["a\n"])
    assert "\x1b[" not in terminal.getvalue()
    assert terminal.getvalue().startswith("[llm] stop")


@pytest.mark.streaming
def test_console_handler_error_summary_is_red_when_coloured(capsys):
    with pytest.raises(StreamTruncatedError):
        run(resolve_handler("console", {"color": True}), chunks=["a"], finish_reason=None)
    assert capsys.readouterr().err.startswith("\x1b[31m[llm] error")


def test_console_handler_reasoning_is_hidden_unless_asked(capsys):
    reasoning = Delta(content="thinking", step="s", run_id="r", seq=1, kind="reasoning")
    ConsoleHandler(summary=False, color=False).handle_event(reasoning)
    assert capsys.readouterr().out == ""
    ConsoleHandler(summary=False, color=False, show_reasoning=True).handle_event(reasoning)
    assert capsys.readouterr().out == "thinking"
    ConsoleHandler(summary=False, color=True, show_reasoning=True).handle_event(reasoning)
    assert capsys.readouterr().out == "\x1b[2mthinking\x1b[0m"


# -- FileHandler ---------------------------------------------------------------------------------

UNICODE_CHUNKS = ["Grüße ", "— ", "日本語", "\n", "  ", "🙂 done\n"]


@pytest.mark.streaming
def test_file_handler_text(tmp_path):
    path = tmp_path / "out" / "reply.txt"  # parent directories are created
    result = run(resolve_handler("file", {"path": str(path)}), chunks=UNICODE_CHUNKS)
    assert path.read_bytes() == "".join(UNICODE_CHUNKS).encode()
    assert path.read_text(encoding="utf-8") == result.text


@pytest.mark.streaming
@pytest.mark.parametrize(
    ("reference", "options"), [("file", {"format": "jsonl"}), ("jsonl", {}), ("Pipeline.Streaming.JsonlHandler", {})]
)
def test_file_handler_jsonl(tmp_path, reference, options):
    path = tmp_path / "events.jsonl"
    recorder = StreamingRecorder()
    run([resolve_handler(reference, {"path": str(path), **options}), recorder], chunks=UNICODE_CHUNKS)

    lines = path.read_text(encoding="utf-8").splitlines()
    parsed = [EVENT_ADAPTER.validate_json(line) for line in lines]
    assert parsed == recorder.events
    assert [json.loads(line)["type"] for line in lines] == ["delta"] * len(UNICODE_CHUNKS) + ["done"]


@pytest.mark.streaming
def test_file_handler_writes_each_delta_before_the_next_event(tmp_path):
    path = tmp_path / "reply.txt"
    chunks = ["first ", "second ", "ünïcödé ", "last"]
    observed = []

    def probe(event):
        observed.append((event.type, os.path.getsize(path)))

    run([FileHandler(str(path)), probe], chunks=chunks)

    expected_sizes = [len("".join(chunks[: i + 1]).encode()) for i in range(len(chunks))]
    assert observed == [("delta", size) for size in expected_sizes] + [("done", expected_sizes[-1])]


@pytest.mark.streaming
def test_file_handler_instance_reused_across_two_steps_appends(tmp_path):
    path = tmp_path / "both.txt"
    handler = FileHandler(str(path))
    ctx = Context()
    llm.invoke(ctx, prompt="p", provider="mock", mock_response=["one\n"], on_event=handler, step="a")
    assert path.read_text() == "one\n"
    llm.invoke(ctx, prompt="p", provider="mock", mock_response=["two\n"], on_event=handler, step="b")
    assert path.read_text() == "one\ntwo\n"


@pytest.mark.streaming
def test_file_handler_append_option(tmp_path):
    path = tmp_path / "log.txt"
    path.write_text("existing\n")

    appending = resolve_handler("file", {"path": str(path), "append": True})
    run(appending, chunks=["a\n"])
    run(appending, chunks=["b\n"])
    assert path.read_text() == "existing\na\nb\n"

    run(resolve_handler("file", {"path": str(path)}), chunks=["fresh\n"])
    assert path.read_text() == "fresh\n"


# -- Buffer, Callback, Null ----------------------------------------------------------------------


@pytest.mark.streaming
def test_buffer_handler_queries_across_two_steps():
    buffer = BufferHandler()
    assert buffer.done is None
    ctx = Context()
    first = llm.invoke(ctx, prompt="p", provider="mock", mock_response=["a", "b"], on_event=buffer, step="first")
    second = llm.invoke(ctx, prompt="p", provider="mock", mock_response=["c"], on_event=buffer, step="second")

    assert len(buffer.events) == 5
    assert [d.content for d in buffer.deltas] == ["a", "b", "c"]
    assert buffer.text == "abc"
    assert buffer.done is second.done
    assert buffer.dones == [first.done, second.done]
    assert list(buffer.by_step) == ["first", "second"]
    assert contents(buffer.by_step["first"]) == ["a", "b", "<done>"]
    assert contents(buffer.by_step["second"]) == ["c", "<done>"]
    seqs = [e.seq for e in buffer.events]
    assert seqs == sorted(set(seqs))  # one numbering across the run's steps
    assert {e.run_id for e in buffer.events} == {ctx.run_id}

    buffer.clear()
    assert buffer.events == [] and buffer.done is None and buffer.text == ""


@pytest.mark.streaming
def test_callback_handler():
    deltas, dones = [], []
    result = run(CallbackHandler(on_delta=deltas.append, on_done=dones.append), chunks=["a", "b"])
    assert [d.content for d in deltas] == ["a", "b"]
    assert dones == [result.done]

    only_done = []
    run(CallbackHandler(on_done=only_done.append), chunks=["x"])
    assert len(only_done) == 1 and only_done[0].response.text == "x"
    run(CallbackHandler(), chunks=["y"])  # no callbacks at all is fine


@pytest.mark.streaming
def test_null_handler():
    assert NullHandler().handle_event(Delta(content="x", step="s", run_id="r", seq=1)) is None
    result = run("null", chunks=["quiet"])
    assert result.text == "quiet"
    assert type(bound_instance(resolve_handler("null"))) is NullHandler


# -- StreamingRecorder ---------------------------------------------------------------------------


@pytest.mark.streaming
def test_recorder_save_and_load_round_trip(tmp_path):
    recorder = StreamingRecorder()
    run(recorder, chunks=UNICODE_CHUNKS)
    recorder.assert_complete()
    path = tmp_path / "recording.jsonl"

    recorder.save(path)
    loaded = StreamingRecorder.load(path)

    assert loaded.events == recorder.events
    assert loaded.offsets_ms == pytest.approx(recorder.offsets_ms, abs=1e-3)
    assert loaded.offsets_ms[0] == 0
    assert loaded.text == "".join(UNICODE_CHUNKS)
    loaded.assert_complete()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == len(recorder.events)
    assert "日本語" in lines[2]  # written as UTF-8, not \u escapes


def test_recorder_load_rejects_a_bad_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"t_ms": 0, "event": {"type": "delta", "content": ""}}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:1: not a recorded event"):
        StreamingRecorder.load(path)


@pytest.fixture
def recorded():
    recorder = StreamingRecorder()
    run(recorder, chunks=["a", "b", "c"])
    recorder.assert_complete()
    return recorder


def _problems(recorder):
    with pytest.raises(AssertionError) as info:
        recorder.assert_complete()
    message = str(info.value)
    assert message.startswith("stream is not complete:\n- ")
    return message


def test_assert_complete_reports_a_missing_done(recorded):
    recorded.events.pop()
    assert "step 'llm': 0 Done events, expected exactly 1" in _problems(recorded)


def test_assert_complete_reports_out_of_order_and_mismatched_text(recorded):
    recorded.events[1], recorded.events[2] = recorded.events[2], recorded.events[1]
    recorded.events.pop(0)
    message = _problems(recorded)
    assert "event #1 (llm): seq 2 does not exceed 3" in message
    assert "joined deltas differ from Done.response.text" in message
    assert "--- Done.response.text\n+++ joined deltas\n@@ -1 +1 @@\n-abc\n+cb" in message


def test_assert_complete_shows_reprs_when_only_a_line_ending_differs():
    recorder = StreamingRecorder()
    run(recorder, chunks=["a", "\n"])
    recorder.events.pop(1)  # drop the newline delta: the lines are the same, the text is not
    message = _problems(recorder)
    assert "Done.response.text='a\\n'\njoined deltas     ='a'" in message


def test_assert_complete_reports_events_after_done_and_empty_deltas(recorded):
    done = recorded.events.pop()
    recorded.events.insert(1, done.model_copy(update={"seq": 2}))
    recorded.events.append(Delta.model_construct(content="", step="llm", run_id=done.run_id, seq=99, kind="text"))
    message = _problems(recorded)
    assert "step 'llm': events arrived after its Done" in message
    assert "empty delta" in message
    assert message.count("\n- ") >= 3  # every violation is listed on its own line


def test_assert_complete_on_an_empty_recording():
    assert "no events were recorded" in _problems(StreamingRecorder())


# -- handler failures ----------------------------------------------------------------------------


class FailsOnSecondDelta:
    def __init__(self):
        self.events = []

    def handle_event(self, event):
        self.events.append(event)
        if isinstance(event, Delta) and len(self.events) == 2:
            raise ValueError("boom on the second delta")


class AsyncFailsOnSecondDelta:
    def __init__(self):
        self.events = []

    async def handle_event(self, event):
        await asyncio.sleep(0)
        self.events.append(event)
        if isinstance(event, Delta) and len(self.events) == 2:
            raise ValueError("async boom")


def _check_handler_failure(error, before, failing, message):
    done = error.done
    assert done.error is not None and done.error.type == "handler"
    assert done.error.exception == "builtins.ValueError"
    assert message in done.error.message
    assert done.response.finish_reason == "error"
    assert error.handler == failing.__class__.__name__ + " instance"
    assert error.handler in str(error)
    assert isinstance(error.__cause__, ValueError)
    assert error.partial_text == "ab" == done.response.text  # the stream stopped at the failing delta
    for events in (before.events, failing.events):
        assert [e for e in events if isinstance(e, Done)] == [done]  # exactly one Done each, and it is last
        assert events[-1] is done
        assert contents(events) == ["a", "b", "<done>"]


@pytest.mark.streaming
def test_sync_handler_failure_in_invoke():
    before, failing = StreamingRecorder(), FailsOnSecondDelta()

    with pytest.raises(HandlerError) as info:
        run([before, failing], chunks=["a", "b", "c", "d"])

    _check_handler_failure(info.value, before, failing, "boom on the second delta")
    before.assert_complete()


@pytest.mark.streaming
async def test_async_handler_failure_in_ainvoke():
    before, failing = StreamingRecorder(), AsyncFailsOnSecondDelta()

    with pytest.raises(HandlerError) as info:
        await arun([before, failing], chunks=["a", "b", "c", "d"])

    _check_handler_failure(info.value, before, failing, "async boom")
    before.assert_complete()


@pytest.mark.streaming
def test_handlers_after_a_failing_one_still_get_one_done():
    failing, after = FailsOnSecondDelta(), StreamingRecorder()

    with pytest.raises(HandlerError) as info:
        run([failing, after], chunks=["a", "b", "c"])

    assert after.dones == [info.value.done]
    assert after.events[-1].error.type == "handler"


@pytest.mark.streaming
def test_handlers_after_a_failing_one_see_text_matching_done():
    failing, after = FailsOnSecondDelta(), StreamingRecorder()
    with pytest.raises(HandlerError):
        run([failing, after], chunks=["a", "b", "c"])
    after.assert_complete()


@pytest.mark.streaming
def test_handler_failing_on_done_still_lets_the_others_receive_it():
    class FailsOnDone:
        def handle_event(self, event):
            if isinstance(event, Done):
                raise RuntimeError("cannot finish")

    before, after = BufferHandler(), BufferHandler()
    with pytest.raises(HandlerError, match=r"while receiving Done") as info:
        run([before, FailsOnDone(), after], chunks=["a", "b"])

    assert info.value.handler.endswith("FailsOnDone instance")
    assert before.dones == after.dones == [info.value.done]
    assert info.value.done.error is None  # the step itself succeeded
    assert after.text == "ab"
