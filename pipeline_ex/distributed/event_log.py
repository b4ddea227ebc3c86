"""A run's events in a Redis Stream, so any process can append to, follow and resume them.

One stream per run, at `<key_prefix>:run:<run_id>:events`. Each event is one entry whose id is
`<seq>-0` and whose one field `e` holds the event's JSON. Putting `seq` in the id's first part means
the id *is* the position a client resumes from: `Last-Event-ID: <run_id>:<seq>` becomes one
`XREAD ... STREAMS <key> <seq>-0` (XREAD returns the entries strictly after an id), with no lookup
table and no scan. The second part stays free: the end marker of a finished run is written as
`<last seq>-1`, so it sorts right after the last event without taking a seq of its own. (`0-<seq>`
would work for resuming too, but leaves no room for such an entry.) A run's seqs start at 1.

**Appending.** `append` (sync) and `aappend` (async) buffer events; a batch is written when

- `batch_size` events are buffered,
- a `Done` or `RunFinished` is appended (a step's or the run's end is never held back),
- the oldest buffered event is `max_delay` seconds old (`aappend` arms a timer for it; sync callers
  get it checked on their next `append`, and call `flush()` when they stop appending),
- and on `flush()`/`aflush()`, `finish()`/`afinish()` and `close()`/`aclose()`.

A flush sends one script call per run (all of them pipelined in one round trip): it checks that the
key is a pipeline-ex stream that has not finished, `XADD`s the run's buffered events, trims the stream
with `XTRIM MAXLEN ~ maxlen`, and refreshes the key's TTL, atomically. The script is hand-written
because `XADD` takes one entry per command and redis-py builds every command in Python: a pipeline of
one `XADD` per event costs about 15 µs of client CPU per event, one script call per batch carrying the
events as lines of one argument about 4 µs (`bench/redis_log.py` measures it, against about 55 µs for
one `XADD` round trip per event). It is sent by `EVALSHA` and loaded
only when Redis answers `NOSCRIPT` (redis-py's pipeline would check every registered script with
`SCRIPT EXISTS` on every execute, one more round trip per batch).

**Finishing.** Appending a `RunFinished` finishes the run; `finish(run_id, status)` does it for a run
that ends without one. The run's stream gets its end marker (an entry whose one field `end` is the
status) and expires `ttl_seconds` later. While a run is going, its key lives `running_ttl_seconds`
after the last flush, so the log of a run whose producer vanished does not stay forever. Appending to
a finished run is an error.

**Reading.** `follow` yields a run's events as they are flushed, waiting in `XREAD BLOCK` (it never
polls), and ends after the run's `RunFinished` or its end marker; it can start before the run's first
event. `events` is a snapshot read. Events are parsed with `EVENT_ADAPTER`.

**Gaps.** The stream keeps about `maxlen` entries (`~`: Redis trims whole internal nodes, so a few
more may stay). A reader that asks for events older than the first kept one gets a `Gap` first, as
the in-memory log reports one: `Gap(after_seq + 1, first kept seq - 1)`, the seqs it will never
see. Redis does not record the highest trimmed id (`max-deleted-entry-id` is only moved by `XDEL`),
so the gap is told by the first kept entry and `XINFO STREAM`'s `entries-added`, asked only when the
entries read do not start at the next seq. Needs Redis 7.0 or newer.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Literal, TypeAlias, cast
from urllib.parse import urlsplit, urlunsplit

from pipeline_ex.errors import ExtraNotInstalledError, PipelineError
from pipeline_ex.events import EVENT_ADAPTER, Delta, Done, RunEvent, RunFinished, RunStatus
from pipeline_ex.gaps import Gap

try:
    import redis
    import redis.asyncio as aioredis
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import NoScriptError, ResponseError
    from redis.exceptions import TimeoutError as RedisTimeoutError
except ModuleNotFoundError as error:  # pragma: no cover - the extra is installed wherever tests run
    raise ExtraNotInstalledError("the Redis event log", "distributed", "redis") from error

DEFAULT_KEY_PREFIX = "pipeline-ex"
DEFAULT_MAXLEN = 10_000
DEFAULT_TTL_SECONDS = 3600
DEFAULT_RUNNING_TTL_SECONDS = 24 * 3600
DEFAULT_BATCH_SIZE = 128
DEFAULT_MAX_DELAY = 0.02
DEFAULT_READ_COUNT = 512

EndStatus: TypeAlias = RunStatus | Literal["finished"]
"""What a run's end marker records: the `RunFinished` status, or `finished` when none was given."""

# KEYS[1]: the run's stream. ARGV[1]: MAXLEN (approximate); ARGV[2]: TTL while running; ARGV[3]: TTL
# once finished; ARGV[4]: the end status, '' while running; ARGV[5]: the events, one "<seq> <json>"
# line each (JSON text never holds a raw newline). Errors start with PX so Python can tell them apart.
_APPEND_SCRIPT = """
local key = KEYS[1]
local kind = redis.call('TYPE', key)['ok']
if kind ~= 'stream' and kind ~= 'none' then
  return redis.error_reply('PXNOTLOG it holds a ' .. kind)
end
local last = '0'
if kind == 'stream' then
  local top = redis.call('XREVRANGE', key, '+', '-', 'COUNT', 1)[1]
  if top then
    local field = top[2][1]
    if field == 'end' then
      if ARGV[5] == '' and ARGV[4] ~= '' then return 0 end
      return redis.error_reply('PXFINISHED ' .. top[2][2])
    end
    if field ~= 'e' then
      return redis.error_reply('PXNOTLOG its entry ' .. top[1] .. ' has a field ' .. tostring(field))
    end
    last = string.sub(top[1], 1, string.find(top[1], '-', 1, true) - 1)
    local first = string.match(ARGV[5], '^(%d+) ')
    if first and tonumber(first) <= tonumber(last) then
      return redis.error_reply('PXSEQ ' .. first .. ' ' .. last)
    end
  end
end
local added = 0
for seq, json in string.gmatch(ARGV[5], '(%d+) ([^\\n]+)') do
  redis.call('XADD', key, seq .. '-0', 'e', json)
  last = seq
  added = added + 1
end
if ARGV[4] ~= '' then
  redis.call('XADD', key, last .. '-1', 'end', ARGV[4])
end
if redis.call('EXISTS', key) == 1 then
  redis.call('XTRIM', key, 'MAXLEN', '~', ARGV[1])
  redis.call('EXPIRE', key, ARGV[4] ~= '' and ARGV[3] or ARGV[2])
end
return added
"""
_APPEND_SHA = hashlib.sha1(_APPEND_SCRIPT.encode()).hexdigest()


class EventLogError(PipelineError):
    """The Redis event log refused an operation (the message says which run and why)."""


class EventLogUnavailable(EventLogError):
    """Redis could not be reached at the log's URL (shown with its password redacted)."""

    def __init__(self, url: str, cause: BaseException) -> None:
        self.url = redact_url(url)
        super().__init__(
            f"cannot reach Redis at {self.url} ({cause}); fix: start a Redis server there "
            "(Debian: apt-get install redis-server) or give the URL of one that is running"
        )


class NotAnEventLog(EventLogError):
    """A key where a run's event stream should be holds something else."""

    def __init__(self, key: str, problem: str) -> None:
        self.key = key
        super().__init__(
            f"Redis key {key!r} is not a pipeline-ex event log: {problem}; "
            "delete it, or give the log a key_prefix of its own"
        )


def redact_url(url: str) -> str:
    """`url` with its password (if any) replaced by `***`, for error messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port is not None else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _seq_of(entry_id: bytes) -> int:
    """The seq an entry id `<seq>-<n>` stands for."""
    return int(entry_id.partition(b"-")[0])


async def newest_seq(client: aioredis.Redis, key: str) -> tuple[int, bool]:
    """The seq of the newest entry of a run's stream (0 when it has none), and whether it is the end marker."""
    newest: Any = await client.xrevrange(key, count=1)
    if not newest:
        return 0, False
    entry_id: bytes = newest[0][0]
    return _seq_of(entry_id), entry_id.endswith(b"-1")


_Entries: TypeAlias = list[tuple[bytes, dict[bytes, bytes]]]
"""Stream entries as redis-py returns them: (id, fields)."""


class _RunWriter:
    """What a writer holds of one run between its first append and its end.

    The lines waiting for a flush, the last seq buffered (out-of-order appends are refused before they
    reach Redis), and its end status once it is finishing.
    """

    __slots__ = ("ending", "key", "last_seq", "lines", "run_id")

    def __init__(self, run_id: str, key: str) -> None:
        self.run_id = run_id
        self.key = key
        self.lines: list[bytes] = []
        self.last_seq = 0
        self.ending = ""


_Batch: TypeAlias = tuple[_RunWriter, list[bytes], str]
"""One run's part of a flush: the run, its `<seq> <json>` lines, and its end status ('' while running)."""

_delta_json = Delta.__pydantic_serializer__.to_json
"""Most events are Deltas: their serializer, looked up once."""


class RedisEventLog:
    """Runs' events in Redis Streams, one per run: batched appends, blocking follows, capped and expiring.

    :param url: a redis-py URL (`redis://[:password@]host:port/db`, `rediss://`, `unix://`).
    :param key_prefix: the keys are `<key_prefix>:run:<run_id>:events`.
    :param maxlen: entries kept per run, about (`XTRIM MAXLEN ~`); older ones are reported as a `Gap`.
    :param ttl_seconds: how long a finished run's log is kept.
    :param running_ttl_seconds: how long a run's log is kept after its last flush while it is going.
    :param batch_size: buffered events that make a flush due.
    :param max_delay: the longest, in seconds, an appended event waits in the buffer.
    :param read_count: entries a follower reads per `XREAD`.
    :param block_ms: how long one `XREAD BLOCK` waits (0, the default: until an entry arrives).
    :param connect_timeout: seconds to wait for a connection to Redis.

    One instance serves any number of runs. Its writes are meant for one thread, and either the sync
    (`append`, `flush`, `finish`, `close`) or the async (`aappend`, `aflush`, `afinish`, `aclose`)
    methods; readers (`follow`, `events`) can be used from anywhere. Every method raises
    `EventLogUnavailable` when Redis cannot be reached.
    """

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = DEFAULT_KEY_PREFIX,
        maxlen: int = DEFAULT_MAXLEN,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        running_ttl_seconds: int = DEFAULT_RUNNING_TTL_SECONDS,
        batch_size: int = DEFAULT_BATCH_SIZE,
        max_delay: float = DEFAULT_MAX_DELAY,
        read_count: int = DEFAULT_READ_COUNT,
        block_ms: int = 0,
        connect_timeout: float = 5.0,
    ) -> None:
        if min(maxlen, ttl_seconds, running_ttl_seconds, batch_size, read_count) < 1:
            raise ValueError("maxlen, ttl_seconds, running_ttl_seconds, batch_size and read_count must be at least 1")
        if max_delay < 0 or block_ms < 0:
            raise ValueError("max_delay and block_ms must not be negative")
        self.url = url
        self.key_prefix = key_prefix
        self.maxlen = maxlen
        self.ttl_seconds = ttl_seconds
        self.running_ttl_seconds = running_ttl_seconds
        self.batch_size = batch_size
        self.max_delay = max_delay
        self.read_count = read_count
        self.block_ms = block_ms
        self.connect_timeout = connect_timeout
        self._client: redis.Redis | None = None
        self._aclient: aioredis.Redis | None = None
        self._runs: dict[str, _RunWriter] = {}
        """The runs appended to and not finished yet."""
        self._dirty: list[_RunWriter] = []
        """The runs with something for the next flush (buffered lines, or their end)."""
        self._count = 0
        self._due = 0.0
        """When the oldest buffered event has waited `max_delay` (time.monotonic)."""
        self._failures: dict[str, Exception] = {}
        """Run id -> why a flush could not write its events, until it is raised to that run's writer."""
        self._lock: asyncio.Lock | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timed: set[asyncio.Task[None]] = set()

    def key(self, run_id: str) -> str:
        """The Redis key of a run's stream."""
        return f"{self.key_prefix}:run:{run_id}:events"

    # -- appending ----------------------------------------------------------------------------------------

    def _writer(self, run_id: str) -> _RunWriter:
        run = self._runs.get(run_id)
        if run is None:
            run = self._runs[run_id] = _RunWriter(run_id, self.key(run_id))
        return run

    def _buffer(self, event: RunEvent) -> bool:
        """Buffer an event; True when a flush is due (see the module docstring)."""
        run = self._runs.get(event.run_id) or self._writer(event.run_id)
        seq = event.seq
        if seq <= run.last_seq or run.ending:
            raise self._refusal(run, seq)
        run.last_seq = seq
        kind = type(event)
        lines = run.lines
        if not lines:
            self._dirty.append(run)
        lines.append(
            b"%d %b" % (seq, _delta_json(event) if kind is Delta else event.__pydantic_serializer__.to_json(event))
        )
        count = self._count = self._count + 1
        if count == 1:
            self._due = time.monotonic() + self.max_delay
        if kind is Delta:
            return count >= self.batch_size or time.monotonic() >= self._due
        if kind is RunFinished:
            run.ending = event.status  # type: ignore[union-attr]
            return True
        return kind is Done or count >= self.batch_size or time.monotonic() >= self._due

    def _refusal(self, run: _RunWriter, seq: int) -> EventLogError:
        if run.ending:
            return EventLogError(f"run {run.run_id} has finished; event seq {seq} cannot be appended")
        return EventLogError(f"event seq {seq} of run {run.run_id} is not above its last appended seq {run.last_seq}")

    def _end(self, run_id: str, status: str) -> None:
        """Make a run finish with the next flush (a run already finishing keeps its status)."""
        run = self._writer(run_id)
        if not run.ending:
            if not run.lines:
                self._dirty.append(run)
            run.ending = status

    def _take(self) -> list[_Batch]:
        """Empty the buffer into one batch per run (a run being finished with nothing buffered included)."""
        batches: list[_Batch] = []
        for run in self._dirty:
            batches.append((run, run.lines, run.ending))
            run.lines = []
        self._dirty, self._count = [], 0
        return batches

    def _script_args(self, batch: _Batch) -> list[Any]:
        """The key and arguments of the script call that writes one batch."""
        run, lines, status = batch
        return [run.key, self.maxlen, self.running_ttl_seconds, self.ttl_seconds, status, b"\n".join(lines)]

    def _raise_failure(self, run_id: str | None) -> None:
        """Raise why a flush could not write the run's events (for `None`: any run's, forgetting the others)."""
        if not self._failures:
            return
        if run_id is None:
            failures, self._failures = self._failures, {}
            raise next(iter(failures.values()))
        error = self._failures.pop(run_id, None)
        if error is not None:
            raise error

    def forget(self, run_id: str) -> None:
        """Drop what this writer holds of a run it will not append to again.

        Its events still buffered, its last seq and an unraised failure go (a worker calls this when a
        run leaves it, however it ended).
        """
        self._failures.pop(run_id, None)
        run = self._runs.pop(run_id, None)
        if run is None:
            return
        if run in self._dirty:
            self._dirty.remove(run)
            self._count -= len(run.lines)
        run.lines, run.ending = [], ""

    def append(self, event: RunEvent) -> None:
        """Buffer an event, writing the buffer when a flush is due (sync callers: `flush()` when done).

        Raises why an earlier flush could not write this run's events, if one could not (the event is
        then not buffered).
        """
        if self._failures:
            self._raise_failure(event.run_id)
        if self._buffer(event):
            self.flush(event.run_id)

    def flush(self, run_id: str | None = None) -> None:
        """Write every buffered event now (one round trip).

        Every run's events are written, and errors belong to the run whose events failed: this raises
        `run_id`'s (others are raised by their own next `append`, `flush` or `finish`), or, without a
        `run_id`, the first of any run.
        """
        batches = self._take()
        if batches:
            self._send(batches)
        self._raise_failure(run_id)

    def finish(self, run_id: str, status: EndStatus = "finished") -> None:
        """Mark a run finished (its buffered events are written first) and let its log expire in `ttl_seconds`.

        Appending its `RunFinished` does this already; finishing a finished run does nothing.
        """
        self._end(run_id, status)
        self.flush(run_id)

    def _send(self, batches: list[_Batch]) -> None:
        todo = batches
        try:
            with self._errors():
                client = self._sync_client()
                while todo:
                    pipe = client.pipeline(transaction=False)
                    for batch in todo:
                        pipe.evalsha(_APPEND_SHA, 1, *self._script_args(batch))
                    results = pipe.execute(raise_on_error=False)
                    todo = self._check(todo, results)
                    if todo:
                        client.script_load(_APPEND_SCRIPT)
        except (EventLogError, ResponseError) as error:
            self._fail(todo, error)

    async def aappend(self, event: RunEvent) -> None:
        """Buffer an event, writing the buffer when a flush is due; a timer writes it after `max_delay`.

        Raises why an earlier flush (the timer's, or one another run's append made) could not write this
        run's events, if one could not (the event is then not buffered).
        """
        if self._failures:
            self._raise_failure(event.run_id)
        if self._buffer(event):
            await self.aflush(event.run_id)
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.max_delay, self._on_timer)

    async def aflush(self, run_id: str | None = None) -> None:
        """Write every buffered event now (one round trip), after any flush already under way.

        Raises as `flush` does: `run_id`'s failure, or without one the first of any run.
        """
        await self._write()
        self._raise_failure(run_id)

    async def _write(self) -> None:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # batches reach Redis in the order they were taken
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            batches = self._take()
            if batches:
                await self._asend(batches)

    async def afinish(self, run_id: str, status: EndStatus = "finished") -> None:
        """`finish`, for async writers."""
        self._end(run_id, status)
        await self.aflush(run_id)

    def _on_timer(self) -> None:
        self._timer = None
        task = asyncio.ensure_future(self._timed_flush())
        self._timed.add(task)
        task.add_done_callback(self._timed.discard)

    async def _timed_flush(self) -> None:
        await self._write()  # a failure is kept for its run: that run's next aappend raises it

    async def _asend(self, batches: list[_Batch]) -> None:
        todo = batches
        try:
            with self._errors():
                client = self._async_client()
                while todo:
                    pipe = client.pipeline(transaction=False)
                    for batch in todo:
                        pipe.evalsha(_APPEND_SHA, 1, *self._script_args(batch))
                    results = await pipe.execute(raise_on_error=False)
                    todo = self._check(todo, results)
                    if todo:
                        await client.script_load(_APPEND_SCRIPT)
        except (EventLogError, ResponseError) as error:
            self._fail(todo, error)

    def _check(self, batches: list[_Batch], results: Sequence[Any]) -> list[_Batch]:
        """The batches to send again once the script is loaded; other failures are kept for their runs."""
        retry: list[_Batch] = []
        for batch, result in zip(batches, results, strict=True):
            run, _, status = batch
            if isinstance(result, NoScriptError):
                retry.append(batch)
            elif isinstance(result, Exception):
                self._fail([batch], result)
            elif status and self._runs.get(run.run_id) is run:
                del self._runs[run.run_id]  # finished: nothing more can be appended to it
        return retry

    def _fail(self, batches: list[_Batch], error: Exception) -> None:
        """Keep why these runs' events could not be written, for each run's writer (the first error of a run wins).

        A run whose end could not be written can be finished again.
        """
        for run, _, status in batches:
            if run.run_id not in self._failures:
                explained = self._explain(run.key, error) if isinstance(error, ResponseError) else error
                if explained is not error:
                    explained.__cause__ = error
                self._failures[run.run_id] = explained
            if status and run.ending == status:
                run.ending = ""

    def _explain(self, key: str, error: Exception) -> Exception:
        message = str(error)
        code, _, detail = message.partition(" ")
        if code == "PXNOTLOG":
            return NotAnEventLog(key, detail)
        if code == "PXFINISHED":
            return EventLogError(f"the run of {key!r} has finished ({detail}); no more events can be appended")
        if code == "PXSEQ":
            first, _, last = detail.partition(" ")
            return EventLogError(f"event seq {first} is not above the last seq {last} already in {key!r}")
        return error

    # -- closing ------------------------------------------------------------------------------------------

    def close(self) -> None:
        """Write what is buffered and close the sync connection."""
        try:
            self.flush()
        finally:
            if self._client is not None:
                self._client.close()
                self._client = None

    async def aclose(self) -> None:
        """Write what is buffered and close the async connections."""
        try:
            if self._timed:
                await asyncio.gather(*self._timed, return_exceptions=True)
            await self.aflush()
        finally:
            if self._aclient is not None:
                await self._aclient.aclose()
                self._aclient = None

    # -- reading ------------------------------------------------------------------------------------------

    async def follow(self, run_id: str, after_seq: int | None = None) -> AsyncIterator[RunEvent | Gap]:
        """The run's events after `after_seq` (from its first without), as they are flushed, until its end.

        Waits in `XREAD BLOCK` for events not written yet (the run need not have started). A `Gap`
        comes first when events after `after_seq` were trimmed. Ends after the run's `RunFinished`
        or its end marker.
        """
        key = self.key(run_id)
        last = after_seq or 0
        cursor = b"%d-0" % last
        client = self._async_client()
        while True:
            with self._errors(key):
                reply: Any = await client.xread({key: cursor}, count=self.read_count, block=self.block_ms)
            if not reply:
                continue
            entries = cast(_Entries, reply[0][1])
            first = _seq_of(entries[0][0])
            if first > last + 1:
                with self._errors(key):
                    info = await client.xinfo_stream(key)
                gap = _gap(info, last, first)
                if gap is not None:
                    yield gap
            for entry_id, fields in entries:
                event = _parse(key, entry_id, fields)
                if event is None:
                    return
                yield event
                if type(event) is RunFinished:
                    return
            cursor = entries[-1][0]
            last = _seq_of(cursor)

    def events(self, run_id: str, after_seq: int = 0) -> list[RunEvent | Gap]:
        """A snapshot of the run's events after `after_seq` (a `Gap` first if some were trimmed)."""
        key = self.key(run_id)
        client = self._sync_client()
        found: list[RunEvent | Gap] = []
        last = after_seq
        start = b"(%d-0" % last
        while True:
            with self._errors(key):
                entries = cast(_Entries, client.xrange(key, min=start, count=self.read_count))
            if not entries:
                return found
            first = _seq_of(entries[0][0])
            if first > last + 1 and not found:
                with self._errors(key):
                    gap = _gap(cast(Any, client.xinfo_stream(key)), last, first)
                if gap is not None:
                    found.append(gap)
            for entry_id, fields in entries:
                event = _parse(key, entry_id, fields)
                if event is None:
                    return found
                found.append(event)
            start = b"(" + entries[-1][0]
            last = _seq_of(entries[-1][0])

    # -- connections --------------------------------------------------------------------------------------

    def _sync_client(self) -> redis.Redis:
        if self._client is None:
            self._client = redis.Redis.from_url(
                self.url, socket_connect_timeout=self.connect_timeout, socket_timeout=None, socket_keepalive=True
            )
        return self._client

    def _async_client(self) -> aioredis.Redis:
        if self._aclient is None:
            # No read timeout (redis-py 6+ defaults to 5 s): a follower waits in XREAD BLOCK for as long as a
            # run is silent. Keepalive probes notice a Redis that went away without closing the connection.
            self._aclient = aioredis.Redis.from_url(
                self.url, socket_connect_timeout=self.connect_timeout, socket_timeout=None, socket_keepalive=True
            )
        return self._aclient

    @contextmanager
    def _errors(self, key: str | None = None) -> Iterator[None]:
        """Turn redis-py's connection and wrong-type errors into the log's own."""
        try:
            yield
        except (RedisConnectionError, RedisTimeoutError) as error:
            raise EventLogUnavailable(self.url, error) from error
        except ResponseError as error:
            if key is not None and str(error).startswith("WRONGTYPE"):
                raise NotAnEventLog(key, "it holds another kind of value than a stream") from error
            raise


def _parse(key: str, entry_id: bytes, fields: dict[bytes, bytes]) -> RunEvent | None:
    """The event an entry holds; None for the end marker."""
    data = fields.get(b"e")
    if data is not None:
        return EVENT_ADAPTER.validate_json(data)
    if b"end" in fields:
        return None
    raise NotAnEventLog(key, f"its entry {entry_id.decode()} has neither an 'e' nor an 'end' field")


def _gap(info: dict[str, Any], last: int, first: int) -> Gap | None:
    """The gap before `first`, the first entry read after seq `last`, if entries were trimmed there."""
    if info["entries-added"] <= info["length"]:
        return None  # nothing was ever trimmed: those seqs were never written
    kept = info["first-entry"]
    if kept is not None and _seq_of(kept[0]) < first:
        return None  # an entry at or before `last` is still kept, so nothing after it was trimmed
    return Gap(last + 1, first - 1)
