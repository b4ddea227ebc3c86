"""The page served at `/`: pick a workflow, fill in its inputs, and watch the tokens stream.

Plain HTML and JavaScript with no outside resources. It posts to `/workflows/{name}/run` with
`Accept: text/event-stream` and reads the SSE frames from the response body as they arrive.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>pipeline_ex</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; color: #1d232b; }
  h1 { font-size: 1.3rem; }
  label { display: block; margin: .6rem 0 .2rem; font-weight: 600; }
  input, select, textarea { width: 100%; padding: .4rem; font: inherit; box-sizing: border-box; }
  button { margin-top: .8rem; padding: .45rem 1.2rem; font: inherit; cursor: pointer; }
  #output { white-space: pre-wrap; border: 1px solid #c9d1d9; border-radius: 6px; padding: .8rem;
            min-height: 6rem; margin-top: 1rem; background: #f6f8fa; }
  .step { color: #57606a; font-size: .85rem; margin-top: .6rem; }
  #summary { margin-top: .6rem; color: #57606a; font-size: .9rem; }
  .error { color: #b42318; }
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
</form>
<div id="output" aria-live="polite"></div>
<div id="summary"></div>
<script>
const state = { workflows: [] };
const $ = (id) => document.getElementById(id);

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

function describeDone(done) {
  const r = done.response;
  const parts = [done.step + ": " + r.finish_reason];
  if (r.usage && r.usage.output_tokens != null) parts.push(r.usage.output_tokens + " tokens out");
  if (r.usage && r.usage.input_tokens != null) parts.push(r.usage.input_tokens + " in");
  if (done.ttft_ms != null) parts.push("TTFT " + Math.round(done.ttft_ms) + " ms");
  parts.push((done.duration_ms / 1000).toFixed(2) + " s");
  if (done.error) parts.push(done.error.type + ": " + done.error.message);
  return parts.join(" · ");
}

function handleFrame(frame) {
  const output = $("output");
  if (frame.event === "delta") {
    const delta = JSON.parse(frame.data);
    if (delta.kind !== "text") return;
    let box = output.querySelector('[data-step="' + delta.step + '"]');
    if (!box) {
      const title = document.createElement("div");
      title.className = "step";
      title.textContent = delta.step;
      box = document.createElement("span");
      box.dataset.step = delta.step;
      output.append(title, box);
    }
    box.append(document.createTextNode(delta.content));
  } else if (frame.event === "done") {
    const line = document.createElement("div");
    line.textContent = describeDone(JSON.parse(frame.data));
    $("summary").append(line);
  } else if (frame.event === "error") {
    const line = document.createElement("div");
    line.className = "error";
    line.textContent = "Error: " + JSON.parse(frame.data).message;
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

async function run(event) {
  event.preventDefault();
  const name = $("workflow").value;
  const inputs = {};
  for (const field of $("inputs").querySelectorAll("input")) if (field.value !== "") inputs[field.name] = field.value;
  $("output").innerHTML = "";
  $("summary").innerHTML = "";
  $("run").disabled = true;
  try {
    const response = await fetch("/workflows/" + encodeURIComponent(name) + "/run", {
      method: "POST",
      headers: headers({ "Content-Type": "application/json", "Accept": "text/event-stream" }),
      body: JSON.stringify({ inputs }),
    });
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      $("summary").innerHTML = "";
      const line = document.createElement("div");
      line.className = "error";
      line.textContent = "Error: " + ((body.error && body.error.message) || response.status);
      $("summary").append(line);
      return;
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let frames;
      [frames, buffer] = parseFrames(buffer);
      frames.forEach(handleFrame);
    }
  } finally {
    $("run").disabled = false;
  }
}

$("workflow").addEventListener("change", showInputs);
$("form").addEventListener("submit", run);
$("token").addEventListener("change", loadWorkflows);
loadWorkflows();
</script>
</body>
</html>
"""
