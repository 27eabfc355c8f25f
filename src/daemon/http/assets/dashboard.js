// darkroom's dashboard: reads /api/v1, follows /api/v1/events, and sends every change with
// the X-Darkroom-Request header (the server refuses state changes without it).
"use strict";
const api = "/api/v1";
const jobs = new Map(); // id -> job, the newest few hundred
const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (v !== null && v !== undefined) node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(c ?? ""));
  return node;
}

async function get(path) {
  const r = await fetch(path, { headers: { Accept: "application/json" } });
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).error || r.statusText);
  return r.json();
}

async function post(path, body, contentType) {
  const headers = { "X-Darkroom-Request": "1" };
  if (contentType) headers["Content-Type"] = contentType;
  const r = await fetch(path, { method: "POST", headers, body });
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(answer.error || r.statusText);
  return answer;
}

function ago(iso) {
  if (!iso) return "";
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  if (s < 129600) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

function flash(message) {
  const note = el("div", { class: "card flash", role: "status" }, message);
  document.body.append(note);
  setTimeout(() => note.remove(), 6000);
}

function thumb(job, of) {
  return el("img", { class: "thumb", loading: "lazy", alt: `${of} of job ${job.id}`,
    src: `${api}/jobs/${job.id}/thumbnail?of=${of}&t=${encodeURIComponent(job.updated_at)}` });
}

function rowsOrEmpty(table, rows, columns, text) {
  table.tBodies[0].replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { class: "empty", colspan: String(columns) }, text))]));
}

function stateCell(job) {
  return el("span", { class: `state ${job.state}` }, job.state);
}

function dropTarget(label, onFile) {
  const input = el("input", { type: "file", accept: "image/*", hidden: "" });
  const zone = el("div", { class: "drop", tabindex: "0", role: "button" }, label, input);
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
  input.addEventListener("change", () => { for (const f of input.files) onFile(f); input.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    for (const f of e.dataTransfer.files) onFile(f);
  });
  return zone;
}

async function renderRules() {
  const { rules } = await get(`${api}/rules`);
  const box = $("rules");
  box.replaceChildren(...rules.map((rule) => {
    const counts = el("div", { class: "counts" },
      ...Object.entries(rule.jobs).sort().map(([state, n]) => el("span", { class: `pill state ${state}` }, `${state} ${n}`)));
    const upload = dropTarget("Drop images here to upload", async (file) => {
      try {
        const job = await post(`${api}/rules/${encodeURIComponent(rule.name)}/images?name=${encodeURIComponent(file.name)}`, file, "application/octet-stream");
        flash(job.id ? `${file.name}: job ${job.id} (${job.state})` : `${file.name}: received, waiting for its claim`);
      } catch (e) { flash(`${file.name}: ${e.message}`); }
    });
    const report = rule.report ? el("a", { href: rule.report, target: "_blank" }, "validation report") : "";
    return el("div", { class: "card" },
      el("h3", {}, el("span", {}, rule.name), el("span", { class: "muted" }, rule.recipe)),
      el("div", { class: "muted" }, rule.inbox), counts, upload, report);
  }));
}

function renderAwaiting() {
  const rows = [...jobs.values()].filter((j) => j.state === "awaiting-return" || (j.state === "expired" && j.proxy));
  $("awaiting-count").textContent = rows.length ? `(${rows.length})` : "";
  rowsOrEmpty($("awaiting"), rows.map((job) => el("tr", {},
    el("td", {}, el("a", { href: `${api}/jobs/${job.id}` }, `#${job.id}`)),
    el("td", {}, el("a", { href: `${api}/jobs/${job.id}/proxy` }, thumb(job, "proxy"))),
    el("td", { class: "wrap" }, job.file),
    el("td", { title: job.updated_at }, ago(job.updated_at)),
    el("td", {}, dropTarget("send the processed image", async (file) => {
      try { await post(`${api}/jobs/${job.id}/return`, file, "application/octet-stream"); flash(`return for job ${job.id} received`); }
      catch (e) { flash(`job ${job.id}: ${e.message}`); }
    })))), 5, "No proxy awaits a return.");
}

function renderFailed() {
  const rows = [...jobs.values()].filter((j) => j.state === "failed" || j.state === "cancelled");
  $("failed-count").textContent = rows.length ? `(${rows.length})` : "";
  rowsOrEmpty($("failed"), rows.map((job) => el("tr", {},
    el("td", {}, el("a", { href: `${api}/jobs/${job.id}` }, `#${job.id}`)),
    el("td", {}, job.rule), el("td", { class: "wrap" }, job.file), el("td", {}, job.failure || job.state),
    el("td", { class: "reason" }, job.error || ""),
    el("td", {}, el("button", { "data-retry": job.id, onclick: async (e) => {
      e.target.disabled = true;
      try { const j = await post(`${api}/jobs/${job.id}/retry`); update(j); flash(`job ${job.id} requeued`); }
      catch (err) { flash(`job ${job.id}: ${err.message}`); e.target.disabled = false; }
    } }, "retry")))), 6, "No failures.");
}

function renderFinished() {
  const done = [...jobs.values()].filter((j) => j.state === "done" && j.kind === "split" && j.outputs.length).slice(0, 12);
  $("finished").replaceChildren(...done.map((job) => {
    const before = el("img", { alt: "before", loading: "lazy", src: `${api}/jobs/${job.id}/thumbnail?of=input` });
    const after = el("img", { class: "after", alt: "after", loading: "lazy", src: `${api}/jobs/${job.id}/thumbnail?of=output&t=${encodeURIComponent(job.updated_at)}` });
    const slider = el("input", { type: "range", min: "0", max: "100", value: "50", "aria-label": "before and after" });
    slider.addEventListener("input", () => { after.style.clipPath = `inset(0 0 0 ${slider.value}%)`; });
    return el("div", { class: "card" },
      el("h3", {}, el("a", { href: `${api}/jobs/${job.id}/output` }, job.file), el("span", { class: "muted" }, job.recipe)),
      el("div", { class: "compare" }, before, after, el("div", { class: "labels" }, el("span", {}, "before"), el("span", {}, "after")), slider),
      el("div", { class: "muted" }, `${ago(job.updated_at)} ago · ${job.outputs.length} output${job.outputs.length > 1 ? "s" : ""}`));
  }));
}

function renderJobs() {
  const rows = [...jobs.values()].slice(0, 60);
  rowsOrEmpty($("jobs"), rows.map((job) => el("tr", { id: `job-${job.id}` },
    el("td", {}, el("a", { href: `${api}/jobs/${job.id}` }, `#${job.id}`)),
    el("td", {}, job.rule), el("td", {}, job.kind), el("td", { class: "wrap" }, job.file),
    el("td", {}, stateCell(job)), el("td", { title: job.updated_at }, `${ago(job.updated_at)} ago`))), 6, "Nothing yet: drop an image into an inbox, or upload one above.");
}

let renderPending = false;
function render() {
  if (renderPending) return;
  renderPending = true;
  requestAnimationFrame(() => {
    renderPending = false;
    renderAwaiting(); renderFailed(); renderFinished(); renderJobs();
  });
}

function update(job) {
  jobs.set(job.id, job);
  const sorted = [...jobs.values()].sort((a, b) => b.id - a.id).slice(0, 400);
  jobs.clear();
  for (const j of sorted) jobs.set(j.id, j);
  render();
}

async function loadJobs() {
  const page = await get(`${api}/jobs?limit=200`);
  for (const job of page.jobs) jobs.set(job.id, job);
  for (const state of ["failed", "awaiting-return", "cancelled"]) {
    const more = await get(`${api}/jobs?state=${state}&limit=100`);
    for (const job of more.jobs) jobs.set(job.id, job);
  }
  update(page.jobs[0] || { id: 0 });
  jobs.delete(0);
  render();
}

async function renderStatus() {
  try {
    const status = await get(`${api}/status`);
    $("version").textContent = `v${status.version}`;
    const lane = status.model_lane;
    const laneText = !lane.alive ? "model lane: stopped" : lane.busy_with ? `model lane: running ${lane.busy_with}` : "model lane: idle";
    // [runtime] devices: a lane whose CUDA device failed takes no work; say which.
    const failed = (status.model_lanes || []).filter((l) => l.device_error);
    const failedText = failed.length ? ` · CUDA device ${failed.map((l) => l.device).join(", ")} failed` : "";
    $("lane").textContent = `${laneText}${lane.provider ? ` · ${lane.provider}` : ""} · ${lane.runs} runs${failedText}`;
    $("lane").title = failed.map((l) => `device ${l.device}: ${l.device_error}`).join("\n");
    $("lane").className = `pill ${!lane.alive || failed.length ? "bad" : lane.busy_with ? "run" : "ok"}`;
    const failing = status.notify.filter((t) => t.delivery && t.delivery.failures > 0);
    $("notify-section").hidden = failing.length === 0;
    $("notify").replaceChildren(...failing.map((t) => el("li", {},
      `${t.url}: ${t.delivery.failures} failed tries, last: ${t.delivery.last_error || "?"}; next try ${t.delivery.next_try_at ? "at " + new Date(t.delivery.next_try_at).toLocaleTimeString() : "soon"}`)));
  } catch (e) { $("lane").textContent = `status: ${e.message}`; }
}

let rulesTimer = null;
function follow() {
  const source = new EventSource(`${api}/events`);
  source.onopen = () => { $("live").textContent = "live"; $("live").className = "pill ok"; };
  source.onerror = () => { $("live").textContent = "reconnecting…"; $("live").className = "pill bad"; };
  source.addEventListener("job", async (message) => {
    const event = JSON.parse(message.data);
    try { update(await get(`${api}/jobs/${event.job}`)); } catch (e) { /* gone or not readable yet */ }
    if (event.kind === "merge" && event.state === "done") {
      const merge = await get(`${api}/jobs/${event.job}`).catch(() => null);
      if (merge && merge.parent) update(await get(`${api}/jobs/${merge.parent}`));
    }
    clearTimeout(rulesTimer);
    rulesTimer = setTimeout(renderRules, 500);
  });
}

renderStatus(); setInterval(renderStatus, 3000);
setInterval(render, 30000);
renderRules().catch((e) => flash(e.message));
loadJobs().catch((e) => flash(e.message)).finally(follow);
