"""The page served at `/`: pick a workflow, fill in its inputs, and watch the tokens stream.

Plain HTML and JavaScript with no outside resources. It posts to `/workflows/{name}/run` with
`Accept: text/event-stream` and reads the SSE frames from the response body as they arrive.

Every LLM step instance gets a panel of its own, keyed by its path (`pros`, `sections[2].draft`): it
appears on the step's `step_started` frame (or its first `delta`), the text of its deltas is appended as
they arrive, and its `done` and `step_finished` frames give its summary and status. Steps that run at the
same time are laid out side by side: a `parallel` or `for_each` group is a row with one column per child
(per item), and the steps of a column, like those of the run, are stacked in order. A step is placed in
the column of the group that is open when it starts and whose children its path names: a `for_each`
claims `sections[i]...`, a `parallel` group the paths of its own scope (a parallel child keeps its id).

The Stop button cancels the run with `DELETE /runs/{run_id}` (the id is the response's `X-Run-Id`); the
run's own stream then brings the cancelled `done`, `step_finished` and `run_finished` frames, which mark
the panels still streaming as cancelled. If that request fails, the page drops its stream instead, which
cancels the run as any client disconnect does.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pipeline_ex</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; max-width: 64rem; margin: 2rem auto; padding: 0 1rem; color: #1d232b; }
  h1 { font-size: 1.3rem; }
  label { display: block; margin: .6rem 0 .2rem; font-weight: 600; }
  input, select, textarea { width: 100%; padding: .4rem; font: inherit; box-sizing: border-box; }
  button { margin-top: .8rem; margin-right: .4rem; padding: .45rem 1.2rem; font: inherit; cursor: pointer; }
  #output { display: flex; flex-direction: column; gap: .6rem; margin-top: 1rem; min-height: 6rem; }
  .panel { border: 1px solid #c9d1d9; border-radius: 6px; padding: .5rem .8rem; background: #f6f8fa; min-width: 0; }
  .panel .text { white-space: pre-wrap; overflow-wrap: anywhere; display: block; min-height: 1.5em; }
  .step { color: #57606a; font-size: .85rem; font-weight: 600; }
  .status { color: #57606a; font-size: .8rem; margin-top: .3rem; }
  .panel[data-status="running"] .status { color: #0969da; }
  .panel[data-status="failed"] { border-color: #b42318; }
  .panel[data-status="failed"] .status { color: #b42318; }
  .panel[data-status="cancelled"] { border-style: dashed; }
  .panel[data-status="cancelled"] .status { color: #9a6700; }
  .group { border-left: 3px solid #d0d7de; padding-left: .6rem; }
  .group-title { color: #57606a; font-size: .8rem; margin-bottom: .3rem; }
  .row { display: grid; grid-template-columns: repeat(auto-fit, minmax(14rem, 1fr)); gap: .6rem; }
  .branch { display: flex; flex-direction: column; gap: .6rem; min-width: 0; }
  #summary, #run-status { margin-top: .6rem; color: #57606a; font-size: .9rem; }
  .error { color: #b42318; }
  .cancelled { color: #9a6700; }
</style>
</head>
<body>
<h1>pipeline_ex</h1>
<form id="form">
  <label for="workflow">Workflow</label>
  <select id="workflow" name="workflow"></select>
  <div id="description"></div>
  <div id="inputs"></div>
  <label for="token">Bearer token (only if the server asks for one)</label>
  <input id="token" type="password" autocomplete="off">
  <button id="run" type="submit">Run</button>
  <button id="stop" type="button" disabled>Stop</button>
</form>
<div id="output" aria-live="polite"></div>
<div id="run-status"></div>
<div id="summary"></div>
<script>
const state = { workflows: [], run: null };
const $ = (id) => document.getElementById(id);
const GROUP_KINDS = new Set(["parallel", "for_each"]);

function headers(extra) {
  const token = $("token").value.trim();
  return Object.assign(token ? { "Authorization": "Bearer " + token } : {}, extra || {});
}

function showInputs() {
  const wf = state.workflows.find((w) => w.name === $("workflow").value);
  $("description").textContent = (wf && wf.description) || "";
  const box = $("inputs");
  box.innerHTML = "";
  if (!wf) return;
  for (const [name, spec] of Object.entries(wf.inputs)) {
    const label = document.createElement("label");
    label.htmlFor = "input-" + name;
    label.textContent = name + (spec.required ? " (required)" : "");
    const field = document.createElement("input");
    field.id = "input-" + name;
    field.name = name;
    field.value = spec.default === null || spec.default === undefined ? "" : String(spec.default);
    if (spec.description) field.placeholder = spec.description;
    box.append(label, field);
  }
}

async function loadWorkflows() {
  const response = await fetch("/workflows", { headers: headers() });
  if (!response.ok) { $("output").textContent = "Could not list workflows (" + response.status + ")"; return; }
  state.workflows = (await response.json()).workflows;
  $("workflow").innerHTML = "";
  for (const wf of state.workflows) {
    const option = document.createElement("option");
    option.value = option.textContent = wf.name;
    $("workflow").append(option);
  }
  showInputs();
}

function describeDone(done, withStep) {
  const r = done.response;
  const parts = [withStep ? done.step + ": " + r.finish_reason : r.finish_reason];
  if (r.usage && r.usage.output_tokens != null) parts.push(r.usage.output_tokens + " tokens out");
  if (r.usage && r.usage.input_tokens != null) parts.push(r.usage.input_tokens + " in");
  if (done.ttft_ms != null) parts.push("TTFT " + Math.round(done.ttft_ms) + " ms");
  parts.push((done.duration_ms / 1000).toFixed(2) + " s");
  if (done.error) parts.push(done.error.type + ": " + done.error.message);
  return parts.join(" · ");
}

// -- layout: panels per step instance, rows for groups whose children run at the same time ----------

function newRun(runId) {
  return { id: runId, panels: new Map(), groups: [], finished: false, controller: new AbortController() };
}

function scopeOf(path) {
  // "sections[2].views" -> "sections[2]."; "views" -> ""
  const cut = path.lastIndexOf(".");
  return cut === -1 ? "" : path.slice(0, cut + 1);
}

function branchKey(group, path) {
  // The column of `group` that the step at `path` belongs to, or null when the group does not claim it.
  if (path === group.path) return null;
  if (group.kind === "for_each") {
    const start = group.path + "[";
    if (!path.startsWith(start)) return null;
    const close = path.indexOf("]", start.length);
    return close === -1 ? null : path.slice(0, close + 1);
  }
  if (!path.startsWith(group.scope)) return null;
  const first = path.slice(group.scope.length).match(/^[^.\\[]+/);
  return first ? group.scope + first[0] : null;
}

function branch(group, key) {
  let column = group.branches.get(key);
  if (!column) {
    column = document.createElement("div");
    column.className = "branch";
    column.dataset.branch = key;
    group.row.append(column);
    group.branches.set(key, column);
  }
  return column;
}

function containerFor(run, path) {
  let container = $("output");
  for (;;) {
    const claimed = run.groups.find((g) => g.open && g.container === container && branchKey(g, path) !== null);
    if (!claimed) return container;
    container = branch(claimed, branchKey(claimed, path));
  }
}

function openGroup(run, event) {
  const container = containerFor(run, event.step);
  const element = document.createElement("div");
  element.className = "group";
  element.dataset.group = event.step;
  const title = document.createElement("div");
  title.className = "group-title";
  title.textContent = event.step + " · " + event.kind;
  const row = document.createElement("div");
  row.className = "row";
  element.append(title, row);
  container.append(element);
  run.groups.push({
    path: event.step, kind: event.kind, scope: scopeOf(event.step), open: true,
    container, element, title, row, branches: new Map(),
  });
}

function panelFor(run, path) {
  let panel = run.panels.get(path);
  if (panel) return panel;
  const element = document.createElement("div");
  element.className = "panel";
  element.dataset.path = path;
  element.dataset.status = "running";
  const title = document.createElement("div");
  title.className = "step";
  title.textContent = path;
  const text = document.createElement("span");
  text.className = "text";
  text.dataset.step = path;
  const status = document.createElement("div");
  status.className = "status";
  status.textContent = "running";
  element.append(title, text, status);
  containerFor(run, path).append(element);
  panel = { element, text, status, summary: "" };
  run.panels.set(path, panel);
  return panel;
}

function setStatus(panel, status, detail) {
  panel.element.dataset.status = status;
  panel.status.textContent = detail ? status + " · " + detail : status;
}

function finishStep(run, event) {
  const group = run.groups.find((g) => g.open && g.path === event.step);
  if (group) {
    group.open = false;
    group.element.dataset.status = event.status;
    group.title.textContent = event.step + " · " + group.kind + " · " + event.status;
    return;
  }
  const panel = run.panels.get(event.step);
  if (!panel) return;
  const detail = event.status === "ok" ? panel.summary : (event.error ? event.error.message : "");
  setStatus(panel, event.status, detail);
}

function endRun(run, status, detail) {
  run.finished = true;
  for (const panel of run.panels.values()) {
    if (panel.element.dataset.status === "running") setStatus(panel, status, detail);
  }
  for (const group of run.groups) group.open = false;
}

// -- frames -----------------------------------------------------------------------------------------

function handleFrame(run, frame) {
  if (frame.event === "step_started") {
    const started = JSON.parse(frame.data);
    if (GROUP_KINDS.has(started.kind)) openGroup(run, started);
    else if (started.kind === "llm") panelFor(run, started.step);
  } else if (frame.event === "delta") {
    const delta = JSON.parse(frame.data);
    if (delta.kind !== "text") return;
    panelFor(run, delta.step).text.append(document.createTextNode(delta.content));
  } else if (frame.event === "done") {
    const done = JSON.parse(frame.data);
    const panel = panelFor(run, done.step);
    panel.summary = describeDone(done, false);
    const reason = done.response.finish_reason;
    setStatus(panel, reason === "cancelled" ? "cancelled" : (done.error ? "failed" : "ok"), panel.summary);
    const line = document.createElement("div");
    line.textContent = describeDone(done, true);
    $("summary").append(line);
  } else if (frame.event === "step_finished") {
    finishStep(run, JSON.parse(frame.data));
  } else if (frame.event === "run_finished") {
    const finished = JSON.parse(frame.data);
    endRun(run, finished.status, finished.error ? finished.error.message : "");
    const seconds = (finished.duration_ms / 1000).toFixed(2) + " s";
    $("run-status").textContent = "Run " + finished.status + " · " + seconds;
    const shade = { ok: "", cancelled: "cancelled" };
    $("run-status").className = finished.status in shade ? shade[finished.status] : "error";
  } else if (frame.event === "error") {
    const error = JSON.parse(frame.data);
    const line = document.createElement("div");
    line.className = error.type === "cancelled" ? "cancelled" : "error";
    line.textContent = (error.type === "cancelled" ? "Cancelled: " : "Error: ") + error.message;
    $("summary").append(line);
  }
}

function parseFrames(buffer) {
  const frames = [];
  let cut;
  while ((cut = buffer.indexOf("\\n\\n")) !== -1) {
    const block = buffer.slice(0, cut);
    buffer = buffer.slice(cut + 2);
    const frame = {};
    for (const line of block.split("\\n")) {
      if (!line || line.startsWith(":")) continue;
      const at = line.indexOf(":");
      const name = line.slice(0, at);
      const value = line.slice(at + 1).replace(/^ /, "");
      frame[name] = name === "data" && frame.data !== undefined ? frame.data + "\\n" + value : value;
    }
    if (frame.event) frames.push(frame);
  }
  return [frames, buffer];
}

function showRequestError(message) {
  $("summary").innerHTML = "";
  const line = document.createElement("div");
  line.className = "error";
  line.textContent = "Error: " + message;
  $("summary").append(line);
}

async function stop() {
  const run = state.run;
  if (!run || run.finished) return;
  $("stop").disabled = true;
  $("run-status").textContent = "Stopping…";
  if (run.id) {
    try {
      const response = await fetch("/runs/" + encodeURIComponent(run.id), { method: "DELETE", headers: headers() });
      if (response.ok) return;  // the run's own stream brings its cancelled events
    } catch (error) {
      // fall through: dropping the stream cancels the run too
    }
  }
  run.controller.abort();
  endRun(run, "cancelled", "stopped");
  $("run-status").textContent = "Run cancelled";
  $("run-status").className = "cancelled";
}

async function run(event) {
  event.preventDefault();
  const name = $("workflow").value;
  const inputs = {};
  for (const field of $("inputs").querySelectorAll("input")) if (field.value !== "") inputs[field.name] = field.value;
  $("output").innerHTML = "";
  $("summary").innerHTML = "";
  $("run-status").textContent = "";
  $("run-status").className = "";
  $("run").disabled = true;
  const current = state.run = newRun(null);
  $("stop").disabled = false;
  try {
    const response = await fetch("/workflows/" + encodeURIComponent(name) + "/run", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", "Accept": "text/event-stream" }),
      body: JSON.stringify({ inputs }),
      signal: current.controller.signal,
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      showRequestError((body.error && body.error.message) || response.status);
      return;
    }
    current.id = response.headers.get("X-Run-Id");
    $("run-status").textContent = "Running";
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let frames;
      [frames, buffer] = parseFrames(buffer);
      for (const frame of frames) handleFrame(current, frame);
    }
  } catch (error) {
    if (error.name !== "AbortError") showRequestError(error.message);
  } finally {
    if (state.run === current) state.run = null;
    current.finished = true;
    $("run").disabled = false;
    $("stop").disabled = true;
  }
}

$("workflow").addEventListener("change", showInputs);
$("form").addEventListener("submit", run);
$("stop").addEventListener("click", stop);
$("token").addEventListener("change", loadWorkflows);
loadWorkflows();
</script>
</body>
</html>
"""
