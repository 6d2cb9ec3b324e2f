// The board's page: asks the server for every run at most every poll_seconds (2 s), draws one row per
// run, maps and sweeps as groups (collapsed until clicked), a run's history on click, and Resubmit on
// crashed, failed and interrupted runs. No framework, no build step.
"use strict";

const { baseUrl, xsrfToken } = window.RESUMABLE_BOARD;
const api = (path) => `${baseUrl}resumable/api/${path}`;
const RESUBMITTABLE = new Set(["crashed", "failed", "interrupted"]);
const openGroups = new Set();
const openRuns = new Map(); // "folder\nkey" -> [folder, key] of the runs whose history is shown
let pollSeconds = 2;
let latest = null;

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function ago(seconds) {
  if (seconds < 60) return `${Math.max(0, Math.round(seconds))} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${(seconds / 3600).toFixed(1)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
}

function progress(row) {
  if (row.position === null) return "";
  const share = row.total ? Math.min(1, row.position / row.total) : null;
  const text = row.total ? `${row.position.toLocaleString()}/${row.total.toLocaleString()}` : row.position.toLocaleString();
  return el("span", {},
    share === null ? null : el("span", { class: "bar" }, el("span", { class: row.state, style: `width:${(share * 100).toFixed(1)}%` })),
    el("span", { class: "progress-text" }, text));
}

function origin(row) {
  const o = row.origin || {};
  const where = o.notebook || o.script || "";
  return o.cell ? `${where}${where ? " · " : ""}cell ${o.cell}` : where;
}

function showMessage(text, isError = false) {
  const box = document.getElementById("message");
  box.textContent = text;
  box.className = isError ? "error" : "";
  box.hidden = !text;
}

async function resubmit(body) {
  const response = await fetch(api("resubmit"), {
    method: "POST",
    headers: { "Content-Type": "application/json", "X-XSRFToken": xsrfToken },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  if (!response.ok) {
    showMessage(`Resubmit refused: ${response.status} ${(await response.text()).slice(0, 300)}`, true);
    return;
  }
  const { results } = await response.json();
  const started = results.filter((r) => r.started);
  const refused = results.filter((r) => !r.started);
  const lines = [];
  if (started.length) lines.push(`Started ${started.length === 1 ? started[0].key : `${started.length} runs`} again with resumable run.`);
  for (const r of refused) lines.push(`${r.key}: not resubmitted: ${r.reason}`);
  showMessage(lines.join(" "), refused.length > 0 && !started.length);
  poll();
}

function resubmitOne(row) {
  let confirm = false;
  if (row.state === "failed") {
    const question = `${row.key} failed with:\n\n${row.error || "(no error recorded)"}\n\n` +
      "The same code fails the same way unless it changed. Start it again?";
    if (!window.confirm(question)) return;
    confirm = true;
  }
  resubmit({ runs: [{ folder: row.folder, key: row.key }], confirm });
}

function resubmitButton(row) {
  if (!RESUBMITTABLE.has(row.state) || !latest.resubmit_enabled) return "";
  const from = row.origin && (row.origin.notebook || row.origin.script);
  return el("button", {
    type: "button", class: "resubmit", disabled: !from,
    title: from ? `Run ${from} again with resumable run` : "No notebook or script is recorded for this run",
    onclick: (event) => { event.stopPropagation(); resubmitOne(row); },
  }, "Resubmit");
}

function runRow(row, member) {
  const id = `${row.folder}\n${row.key}`;
  const now = Date.now() / 1000;
  const launch = row.launch;
  const launchNote = launch && launch.exit_status === null && row.state === "running" && !row.owner
    ? `resubmitted, starting (pid ${launch.pid})` : launch && launch.exit_status ? `resubmit ended with status ${launch.exit_status}: ${launch.last_line || ""}` : null;
  const tr = el("tr", {
    class: `run${member ? " member" : ""}`, "data-state": row.state, "data-key": row.key, "data-folder": row.folder,
    onclick: () => toggleRun(row),
  },
    el("td", { class: "state", title: row.state }, el("span", { class: `dot ${row.state}` })),
    el("td", { class: "run-cell" }, el("span", { class: "key" }, row.key), " ", el("span", { class: "statename" }, row.state),
      row.error ? el("div", { class: "error-line" }, row.error) : null,
      row.problem ? el("div", { class: "error-line" }, row.problem) : null,
      row.owner ? el("div", { class: "owner" }, row.owner) : null,
      launchNote ? el("div", { class: "note" }, launchNote) : row.note ? el("div", { class: "note" }, row.note) : null),
    el("td", {}, row.params),
    el("td", { class: "num" }, progress(row)),
    el("td", { class: "num" }, row.checkpoint_time ? ago(now - row.checkpoint_time) : ""),
    el("td", { class: "num" }, row.state === "planned" ? "" : bytes(row.size)),
    el("td", {}, origin(row)),
    el("td", {}, resubmitButton(row)));
  const rows = [tr];
  if (openRuns.has(id)) rows.push(detailsRow(row));
  return rows;
}

const details = new Map(); // "folder\nkey" -> the run's row with its history, fetched at each poll while open

async function fetchDetails(id) {
  const [folder, key] = openRuns.get(id);
  const response = await fetch(`${api("run")}?folder=${encodeURIComponent(folder)}&key=${encodeURIComponent(key)}`,
    { credentials: "same-origin" });
  if (response.ok) details.set(id, await response.json());
  else details.delete(id);
}

function toggleRun(row) {
  const id = `${row.folder}\n${row.key}`;
  if (openRuns.has(id)) {
    openRuns.delete(id);
    details.delete(id);
  } else {
    openRuns.set(id, [row.folder, row.key]);
    fetchDetails(id).then(draw);
  }
  draw();
}

function detailsRow(row) {
  const full = details.get(`${row.folder}\n${row.key}`);
  const cell = el("td", { colspan: 8 });
  if (!full) {
    cell.textContent = "Loading the history...";
  } else {
    const events = full.history || [];
    cell.append(el("div", {}, `Folder: ${row.folder}`),
      events.length ? el("ol", { class: "history" }, events.map((e) => el("li", {}, historyLine(e))))
        : el("div", {}, row.state === "planned" ? "Planned: no worker has started it yet." : "No history recorded."),
      ...(full.problems || []).map((p) => el("div", { class: "error-line" }, p)));
  }
  return el("tr", { class: "details" }, cell);
}

function historyLine(event) {
  const when = event.time ? new Date(event.time * 1000).toLocaleString() : "";
  const rest = Object.entries(event).filter(([k]) => k !== "time" && k !== "event")
    .map(([k, v]) => `${k} ${typeof v === "object" ? JSON.stringify(v) : v}`).join(", ");
  return `${when} ${event.event || ""}${rest ? ": " + rest : ""}`;
}

function chips(counts) {
  return latest.states.filter((s) => counts[s]).map((s) => el("span", { class: `chip ${s}` }, `${counts[s]} ${s}`));
}

function groupRows(group) {
  const tr = el("tr", {
    class: "group", "data-group": group.key, "data-folder": group.folder,
    onclick: () => { openGroups.has(group.id) ? openGroups.delete(group.id) : openGroups.add(group.id); poll(); },
  },
    el("td", {}, openGroups.has(group.id) ? "▾" : "▸"),
    el("td", { class: "run-cell", colspan: 7 }, el("span", { class: "key" }, group.key), " ", chips(group.counts)));
  return [tr, ...(group.open ? group.rows.flatMap((row) => runRow(row, true)) : [])];
}

function draw() {
  if (!latest) return;
  const body = document.querySelector("#runs tbody");
  body.replaceChildren(...latest.groups.flatMap(groupRows), ...latest.runs.flatMap((row) => runRow(row, false)));
  document.getElementById("counts").replaceChildren(...chips(latest.counts));
  const crashed = latest.counts.crashed || 0;
  const all = document.getElementById("resubmit-crashed");
  all.hidden = !crashed || !latest.resubmit_enabled;
  all.textContent = `Resubmit all crashed (${crashed})`;
  document.getElementById("folders").replaceChildren(
    ...latest.folders.filter((f) => f.error).map((f) => el("div", { class: "folder-error" }, `${f.folder}: ${f.error}`)));
  document.getElementById("empty").hidden = latest.runs.length + latest.groups.length > 0;
  document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

let timer = null;
async function poll() {
  clearTimeout(timer);
  try {
    const query = [...openGroups].map((g) => `open=${encodeURIComponent(g)}`).join("&");
    const response = await fetch(`${api("runs")}?${query}`, { credentials: "same-origin" });
    if (response.ok) {
      latest = await response.json();
      pollSeconds = latest.poll_seconds || pollSeconds;
      await Promise.all([...openRuns.keys()].map(fetchDetails));
      draw();
    } else {
      showMessage(`The server answered ${response.status}: reload the page (log in again?)`, true);
    }
  } catch (error) {
    showMessage(`Cannot reach the server: ${error}`, true);
  }
  timer = setTimeout(poll, pollSeconds * 1000);
}

document.getElementById("resubmit-crashed").addEventListener("click", () => resubmit({ all_crashed: true }));
document.addEventListener("visibilitychange", () => { if (!document.hidden) poll(); });
poll();
