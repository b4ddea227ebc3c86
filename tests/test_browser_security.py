"""`pipeline-ex serve` against a real Chromium: an attacker's page on another local origin, DNS rebinding,
and a browser `EventSource` that must stop reconnecting once a run has ended.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from browser_kit import launch_chromium, require_chromium
from server_kit import SSE, ThreadServer, TimedRegistry

from pipeline_ex.server import create_app

pytestmark = pytest.mark.streaming

REBIND_HOST = "rebind.test"

sync_api = require_chromium()


ATTACK = """<!doctype html>
<html><body>
<iframe name="sink" id="sink"></iframe>
<form id="form" method="POST" target="sink" enctype="text/plain">
  <input name='{"inputs": {"prompt": "x", "pad": "' value='"}}'>
</form>
<script>
async function attempt(url, options) {
  try {
    const response = await fetch(url, options);
    try { return "read:" + response.type + ":" + response.status + ":" + (await response.text()); }
    catch (error) { return "unreadable:" + response.type; }
  } catch (error) {
    return "blocked:" + error.name;
  }
}
window.attack = async (target) => {
  const body = JSON.stringify({inputs: {prompt: "pwned"}});
  const chat = JSON.stringify({model: "fast", messages: [{role: "user", content: "pwned"}]});
  const results = {
    text_plain: await attempt(target + "/workflows/fast/run",
      {method: "POST", body, headers: {"Content-Type": "text/plain"}}),
    sse: await attempt(target + "/workflows/fast/run?resumable=true",
      {method: "POST", body, headers: {"Content-Type": "text/plain", "Accept": "text/event-stream"}}),
    chat: await attempt(target + "/v1/chat/completions",
      {method: "POST", body: chat, headers: {"Content-Type": "text/plain"}}),
    no_cors: await attempt(target + "/workflows/fast/run", {method: "POST", mode: "no-cors", body}),
    listing: await attempt(target + "/workflows", {}),
  };
  const form = document.getElementById("form");
  form.action = target + "/workflows/fast/run";
  form.submit();
  return results;
};
</script>
</body></html>
"""


class AttackerSite:
    """A second local origin (another port) serving the attacker's page, with the stdlib HTTP server."""

    def __init__(self) -> None:
        page = ATTACK.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(page)))
                self.end_headers()
                self.wfile.write(page)

            def log_message(self, *_: Any) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.url = f"http://localhost:{self.httpd.server_address[1]}"

    def __enter__(self) -> AttackerSite:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class CountingApp:
    """Passes requests to the app and counts them by path (to see how often a browser comes back)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.paths: list[str] = []
        self.statuses: list[int] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            self.paths.append(scope["path"])

            async def counting_send(message: Any) -> None:
                if message["type"] == "http.response.start":
                    self.statuses.append(message["status"])
                await send(message)

            await self.app(scope, receive, counting_send)
            return
        await self.app(scope, receive, send)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    from server_kit import write_workflows

    return write_workflows(tmp_path / "workflows", ["fast", "slow"])


@pytest.fixture
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = launch_chromium(playwright, f"--host-resolver-rules=MAP {REBIND_HOST} 127.0.0.1")
        try:
            yield launched
        finally:
            launched.close()


def test_a_page_on_another_origin_cannot_start_or_read_a_run(folder: Path, browser: Any) -> None:
    registry = TimedRegistry()
    counted = CountingApp(create_app(folder, api_key="", registry=registry))
    with AttackerSite() as attacker:
        server = ThreadServer(counted).start()
        try:
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.goto(attacker.url + "/")
            results = page.evaluate("target => window.attack(target)", server.url)
            page.wait_for_timeout(500)  # the form post lands in the iframe
        finally:
            server.stop()
    seen = list(zip(counted.paths, counted.statuses, strict=False))
    print(f"\n[attacker page] {json.dumps(results)}; server saw {seen}")
    assert results["no_cors"] == "read:opaque:0:"  # an opaque response: nothing to read
    for name in ("text_plain", "sse", "chat", "listing"):
        assert results[name].startswith("blocked:TypeError"), (name, results[name])
    run_requests = [
        s for p, s in zip(counted.paths, counted.statuses, strict=False) if p.endswith("/run") or p.startswith("/v1")
    ]
    assert len(run_requests) == 5 and all(status in (403, 415) for status in run_requests), run_requests
    assert registry.logs == {}  # no run started


def test_dns_rebinding_reaches_nothing(folder: Path, browser: Any) -> None:
    registry = TimedRegistry()
    server = ThreadServer(create_app(folder, api_key="", registry=registry)).start()
    try:
        page = browser.new_page()
        page.set_default_timeout(15_000)
        rebound = f"http://{REBIND_HOST}:{server.port}"
        response = page.goto(rebound + "/workflows")
        assert response is not None and response.status == 400
        assert "--allowed-hosts" in json.loads(page.inner_text("body"))["error"]["message"]
        status = page.evaluate(
            """async () => (await fetch("/workflows/fast/run", {method: "POST",
                 headers: {"Content-Type": "application/json"}, body: "{}"})).status"""
        )  # the page now counts as the server's own origin: only the Host check stands in the way
        assert status == 400
    finally:
        server.stop()
    assert registry.logs == {}


EVENT_SOURCE = """async ([url, seconds]) => {
  const source = new EventSource(url);
  const events = [];
  // (an "error" listener would also hear the browser's own connection errors, so it is left out)
  for (const kind of ["delta", "done", "end", "gap"]) source.addEventListener(kind, () => events.push(kind));
  const started = Date.now();
  while (source.readyState !== EventSource.CLOSED && Date.now() - started < seconds * 1000) {
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  const state = source.readyState;
  source.close();
  return {state, events};
}"""


@pytest.mark.parametrize("workflow", ["fast", "slow"], ids=["finished", "live"])
def test_an_event_source_stops_after_the_run_ended(folder: Path, browser: Any, workflow: str) -> None:
    registry = TimedRegistry()
    counted = CountingApp(create_app(folder, api_key="", registry=registry, retry_ms=200))
    server = ThreadServer(counted).start()
    try:
        with (
            httpx.Client(base_url=server.url, timeout=20) as http,
            http.stream("POST", f"/workflows/{workflow}/run?resumable=true", json={}, headers=SSE) as first,
        ):
            run_id = first.headers["x-run-id"]  # the client leaves at once; the run goes on
        if workflow == "fast":
            registry.wait_finished([run_id])
        page = browser.new_page()
        page.set_default_timeout(20_000)
        page.goto(server.url + "/")
        outcome = page.evaluate(EVENT_SOURCE, [f"/runs/{run_id}/events", 8])
    finally:
        server.stop()
    follows = [s for p, s in zip(counted.paths, counted.statuses, strict=False) if p == f"/runs/{run_id}/events"]
    print(
        f"\n[EventSource, {workflow} run] readyState {outcome['state']}, events {outcome['events']}, requests {follows}"
    )
    assert outcome["state"] == 2  # CLOSED: the browser gave up by itself
    assert outcome["events"].count("done") == 1 and outcome["events"][-1] == "end"
    assert follows[-1] == 204 and len(follows) <= 3, follows
