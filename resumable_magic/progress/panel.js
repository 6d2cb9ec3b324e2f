// The view of a %%resumable run's panel (the model is panel.py). The kernel draws what it knows
// through the `view` trait; this file adds what only the browser can know: that the kernel died
// (a `resumable-kernel-died` event from the JupyterLab extension, with the newest checkpoint on
// disk), or that it has gone silent (no heartbeat for SILENT_AFTER seconds while running).

const SILENT_AFTER = 5; // seconds without a heartbeat before the view says so
const DEAD = "#d32f2f";
const SILENT = "#f9a825";

const count = (n) => Number(n).toLocaleString("en-US");
const plural = (n, word) => `${count(n)} ${word}${n === 1 ? "" : "s"}`;

function clock(seconds) {
  const then = new Date(seconds * 1000);
  const two = (v) => String(v).padStart(2, "0");
  const time = `${two(then.getHours())}:${two(then.getMinutes())}:${two(then.getSeconds())}`;
  if (then.toDateString() === new Date().toDateString()) return time;
  return `${then.getFullYear()}-${two(then.getMonth() + 1)}-${two(then.getDate())} ${time.slice(0, 5)}`;
}

function duration(seconds) {
  const s = Math.max(Math.floor(seconds), 0);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${String(s % 60).padStart(2, "0")} s`;
  return `${Math.floor(s / 3600)} h ${String(Math.floor(s / 60) % 60).padStart(2, "0")} min`;
}

// checkpoint: the event's detail.checkpoint (read from disk by the extension) or null: then the
// newest checkpoint the kernel reported, which can lag the disk.
export function deathText(view, checkpoint) {
  const total = checkpoint?.total ?? view.total;
  const of = total == null ? "" : ` of ${count(total)}`;
  if (checkpoint && checkpoint.folder_exists === false) {
    return `Kernel died at about iteration ${count(view.position)}${of}. No checkpoint on disk: running the cell again starts over.`;
  }
  const last = checkpoint ? { iteration: checkpoint.iteration ?? checkpoint.position, time: checkpoint.time }
    : view.last_checkpoint;
  // The disk can be ahead of the last count the kernel sent (a background writer commits first).
  const reached = Math.max(view.position, last?.iteration ?? 0);
  let text = `Kernel died at about iteration ${count(reached)}${of}.`;
  if (!last) return `${text} No checkpoint was written: running the cell again starts over.`;
  // Seconds since the epoch (the kernel's figure) or an ISO 8601 string (the server's reading of the disk).
  const seconds = typeof last.time === "string" ? Date.parse(last.time) / 1000 : last.time;
  const when = Number.isFinite(seconds) ? clock(seconds) : "";
  text += ` Last checkpoint: iteration ${count(last.iteration)}${when ? ` (${when})` : ""}.`;
  const redone = Math.max(reached - last.iteration, 0);
  const cost = redone ? `${plural(redone, "iteration")} will be redone` : "nothing will be redone";
  return `${text} Run the cell again to resume (${cost}).`;
}

function element(tag, className, parent) {
  const el = document.createElement(tag);
  el.className = className;
  parent?.appendChild(el);
  return el;
}

function render({ model, el }) {
  const root = element("div", "resumable-widget", el);
  const header = element("div", "rm-header", root);
  const state = element("span", "rm-state", header);
  const word = element("span", "rm-state-word", state);
  const bar = element("div", "rm-bar", header);
  const fill = element("div", "rm-bar-fill", bar);
  const position = element("span", "rm-position", header);
  const alert = element("div", "rm-alert", root);
  const details = element("div", "rm-details", root);
  alert.hidden = true;
  // The last heartbeat by this browser's clock: when the view is drawn from saved state (a notebook
  // reopened later), the kernel's own time of it.
  let lastBeat = Math.min(Date.now(), model.get("heartbeat") * 1000);
  let restarted = false;

  function status() {
    return model.get("death") ? "dead" : model.get("status");
  }

  function drawAlert() {
    const view = model.get("view");
    const death = model.get("death");
    let text = "";
    let kind = "";
    if (death) {
      kind = "dead";
      text = deathText(death.view, death.checkpoint);
      if (restarted) text += " The kernel has restarted.";
    } else if (model.get("status") === "running") {
      const silent = (Date.now() - lastBeat) / 1000;
      if (silent >= SILENT_AFTER) {
        kind = "silent";
        text = `No word from the kernel for ${duration(silent)} (busy in one long call, or gone).`;
      }
    }
    alert.hidden = !text;
    alert.className = `rm-alert${kind ? ` rm-alert-${kind}` : ""}`;
    alert.textContent = text;
    root.dataset.silent = kind === "silent" ? "true" : "false";
    const badge = { dead: ["kernel died", DEAD], silent: ["silent", SILENT] }[kind] ?? [view.word, view.colour];
    word.textContent = badge[0];
    word.style.background = badge[1];
    fill.style.background = badge[1];
  }

  function draw() {
    const view = model.get("view");
    const now = status();
    root.dataset.key = model.get("key");
    root.dataset.directory = model.get("directory");
    root.dataset.status = now;
    word.className = `rm-state-word rm-state-${now === "dead" ? "dead" : view.state}`;
    bar.hidden = view.total == null;
    fill.style.width = `${view.total ? Math.min(100, (100 * view.position) / view.total) : 0}%`;
    position.textContent = view.count;
    details.innerHTML = view.details_html;
    drawAlert();
  }

  function died(event) {
    if (model.get("death") || model.get("status") !== "running") return; // an ended run stays as it ended
    const checkpoint = event.detail?.checkpoint ?? null;
    // Kept in the model, so that a notebook saved now reopens in this state; never sent (no kernel).
    model.set("death", { view: model.get("view"), checkpoint });
    draw();
  }

  function restartedNow() {
    restarted = true;
    drawAlert();
  }

  const beat = () => {
    lastBeat = Date.now();
    drawAlert();
  };
  model.on("change:view", draw);
  model.on("change:status", draw);
  model.on("change:heartbeat", beat);
  root.addEventListener("resumable-kernel-died", died);
  root.addEventListener("resumable-kernel-restarted", restartedNow);
  const timer = setInterval(drawAlert, 1000);
  draw();
  return () => {
    clearInterval(timer);
    model.off("change:view", draw);
    model.off("change:status", draw);
    model.off("change:heartbeat", beat);
  };
}

export default { render };
