// The embedded stack's page: sweeps and jobs, one job's SSR curve and picture, a sweep's
// leaderboard. It uses the public HTTP API only, and refreshes itself while work runs.
"use strict";

const KEY = "descent.apiKey";          // localStorage: the API key, when auth is on
const CURVE = "#d62728";               // the SSR curve (the screenshot test looks for it)
const ACTIVE = new Set(["queued", "running"]);
const FAST = 2000;                     // ms between refreshes while anything runs
const SLOW = 15000;                    // otherwise (new work still shows up)
const PICTURE_EVERY = 10000;           // a running job's server picture at most this often
const HISTORY_POINTS = 600;

const $ = (id) => document.getElementById(id);
let timer = null;
let generation = 0; // a newer refresh (a click) supersedes one still waiting for answers

class AuthNeeded extends Error {}

// An id as a label: its last 8 digits. The first ones are the creation time (UUIDv7), shared by
// every member of a sweep.
const shortId = (id) => id.slice(-8);

async function api(path, blob = false) {
  const key = localStorage.getItem(KEY);
  const answer = await fetch(path, { headers: key ? { Authorization: `Bearer ${key}` } : {} });
  if (answer.status === 401) throw new AuthNeeded(key ? "that key was refused" : "this API needs a key");
  if (!answer.ok) throw new Error(`${path} answered ${answer.status}`);
  return blob ? answer.blob() : answer.json();
}

function selection() {
  const [kind, id] = decodeURIComponent(location.hash.slice(1)).split("/");
  return (kind === "job" || kind === "sweep") && id ? { kind, id } : null;
}

async function refresh() {
  clearTimeout(timer);
  const mine = ++generation;
  let active = false;
  try {
    const [jobs, sweeps] = await Promise.all([api("/v1/jobs?limit=50"), api("/v1/sweeps?limit=20")]);
    if (mine !== generation) return;
    $("auth").hidden = true;
    const pick = selection() || (jobs.items.length ? { kind: "job", id: jobs.items[0].id } : null);
    renderSweeps(sweeps.items, pick);
    renderJobs(jobs.items, pick);
    active = [...jobs.items, ...sweeps.items].some((item) => ACTIVE.has(item.status));
    show(pick ? pick.kind : null); // before drawing: a hidden canvas has no size
    if (pick) active = (await (pick.kind === "job" ? showJob(pick.id) : showSweep(pick.id))) || active;
    if (mine !== generation) return;
    $("state").textContent = `updated ${new Date().toLocaleTimeString()}` +
      (active ? " · refreshing every 2 s while work runs" : "");
  } catch (error) {
    if (mine !== generation) return;
    if (error instanceof AuthNeeded) {
      askForKey(error.message);
      return; // until a key is given
    }
    $("state").textContent = `${error.message}; trying again`;
  }
  timer = setTimeout(refresh, active ? FAST : SLOW);
}

function show(kind) {
  $("nothing").hidden = kind !== null;
  $("job-detail").hidden = kind !== "job";
  $("sweep-detail").hidden = kind !== "sweep";
}

// --- lists ------------------------------------------------------------------------------------

function cell(row, text, className) {
  const td = row.insertCell();
  if (text instanceof Node) td.append(text);
  else td.textContent = text;
  if (className) td.className = className;
  return td;
}

function badge(status) {
  const span = document.createElement("span");
  span.className = `badge ${status}`;
  span.textContent = status;
  return span;
}

function bar(done, total) {
  const share = total > 0 ? Math.min(1, done / total) : 0;
  const outer = document.createElement("span");
  outer.className = "bar";
  outer.title = `${done} of ${total} steps`;
  const inner = document.createElement("span");
  inner.style.width = `${(100 * share).toFixed(1)}%`;
  outer.append(inner);
  const label = document.createElement("span");
  label.className = "bar-label";
  label.textContent = `${Math.floor(100 * share)} %`;
  const both = document.createElement("span");
  both.append(outer, label);
  return both;
}

const ssrText = (value) => (value === null || value === undefined ? "–" : Number(value).toPrecision(4));

function fill(table, items, pick, kind, columns) {
  const body = table.tBodies[0];
  body.replaceChildren();
  for (const item of items) {
    const row = body.insertRow();
    row.dataset.id = item.id;
    row.className = pick && pick.kind === kind && pick.id === item.id ? "selected" : "";
    row.addEventListener("click", () => { location.hash = `${kind}/${item.id}`; });
    columns(row, item);
  }
}

function renderJobs(items, pick) {
  $("no-jobs").hidden = items.length > 0;
  fill($("jobs"), items, pick, "job", (row, job) => {
    cell(row, job.name, "name");
    cell(row, badge(job.status));
    cell(row, job.max_steps ? bar(job.step, job.max_steps) : `step ${job.step}`);
    cell(row, ssrText(job.ssr), "number");
    cell(row, new Date(job.created_at).toLocaleTimeString(), "muted");
  });
}

function renderSweeps(items, pick) {
  $("no-sweeps").hidden = items.length > 0;
  fill($("sweeps"), items, pick, "sweep", (row, sweep) => {
    cell(row, sweep.name, "name");
    cell(row, badge(sweep.status));
    cell(row, String(sweep.members), "number");
    // Early-stopped members never run their planned steps: a finished sweep is done.
    const done = sweep.status === "finished" ? sweep.steps_planned : sweep.steps_done;
    cell(row, bar(done, sweep.steps_planned));
    cell(row, ssrText(sweep.best && sweep.best.ssr), "number");
  });
}

// --- one job, one sweep -----------------------------------------------------------------------

async function showJob(id) {
  const path = `/v1/jobs/${encodeURIComponent(id)}`;
  const [job, history] = await Promise.all([api(path), api(`${path}/history?max_points=${HISTORY_POINTS}`)]);
  $("job-title").textContent = `${job.name} · ${job.id}`;
  $("job-facts").textContent = [
    job.status + (job.stop_reason ? ` (${job.stop_reason})` : ""), `step ${job.step}`, `SSR ${ssrText(job.ssr)}`,
    job.sweep_id ? `member of sweep ${shortId(job.sweep_id)}` : null,
    job.worker && job.worker.hostname ? `worker ${job.worker.hostname}:${job.worker.pid}` : null,
    job.queue_workers === 0 ? `waits for a ${job.device} worker: none is running` : null,
    job.error ? `error: ${job.error}` : null,
  ].filter(Boolean).join(" · ");
  drawSsr($("ssr-chart"), history);
  await picture($("job-plot"), `${path}/plot.png`, `${job.id}/${job.step}/${job.status}`, ACTIVE.has(job.status));
  return ACTIVE.has(job.status);
}

async function showSweep(id) {
  const path = `/v1/sweeps/${encodeURIComponent(id)}`;
  const sweep = await api(path);
  $("sweep-title").textContent = `${sweep.name} · ${sweep.id}`;
  const counts = Object.entries(sweep.counts).map(([status, n]) => `${n} ${status}`).join(", ");
  $("sweep-facts").textContent = [
    sweep.status, `${sweep.members} members (${counts})`,
    `${sweep.steps_done} of ${sweep.steps_planned} planned steps trained`,
    sweep.paths.length ? `varies ${sweep.paths.join(", ")}` : null,
    sweep.early_stopping ? `successive halving from step ${sweep.early_stopping.min_steps}` : null,
  ].filter(Boolean).join(" · ");
  const body = $("leaderboard").tBodies[0];
  body.replaceChildren();
  sweep.leaderboard.forEach((entry, rank) => {
    const row = body.insertRow();
    cell(row, String(rank + 1), "number");
    const link = document.createElement("a");
    link.href = `#job/${entry.job_id}`;
    link.textContent = shortId(entry.job_id);
    cell(row, link);
    cell(row, ssrText(entry.ssr), "number");
    cell(row, String(entry.step), "number");
    cell(row, entry.stop_reason || entry.status);
    cell(row, Object.entries(entry.values).map(([k, v]) => `${k}=${v}`).join(", "), "values");
  });
  const running = ACTIVE.has(sweep.status);
  await picture($("sweep-plot"), `${path}/plot.png`, `${sweep.id}/${sweep.steps_done}/${sweep.status}`, running);
  return running;
}

// The server's PNG, fetched with the key (an <img src> could not send it); fetched again when
// what it shows changed, and while work runs at most every PICTURE_EVERY ms.
async function picture(img, path, key, running) {
  if (img.dataset.key === key) return;
  const at = Number(img.dataset.at || 0);
  const same = img.dataset.key && img.dataset.key.split("/")[0] === key.split("/")[0];
  if (running && same && Date.now() - at < PICTURE_EVERY) return;
  const blob = await api(path, true);
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  img.dataset.key = key;
  img.dataset.at = String(Date.now());
}

// --- the SSR chart ----------------------------------------------------------------------------

function niceStep(range, count) {
  const raw = range / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * power).find((step) => step >= raw);
}

function drawSsr(canvas, history) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, width, height);
  ctx.font = "12px sans-serif";
  const box = { left: 64, right: width - 14, top: 12, bottom: height - 34 };
  const points = history.steps.map((step, i) => [step, history.ssr[i]])
    .filter(([, ssr]) => ssr !== null && ssr > 0);
  const rect = canvas.getBoundingClientRect();
  canvas.dataset.rect = [rect.left + scrollX, rect.top + scrollY, rect.width, rect.height].map(Math.round).join(",");
  canvas.dataset.points = String(points.length);
  ctx.strokeStyle = "#555";
  ctx.strokeRect(box.left, box.top, box.right - box.left, box.bottom - box.top);
  if (!points.length) {
    ctx.fillStyle = "#666";
    ctx.textAlign = "center";
    ctx.fillText("no SSR recorded yet", (box.left + box.right) / 2, (box.top + box.bottom) / 2);
    return;
  }
  const first = points[0][0];
  const last = Math.max(points[points.length - 1][0], first + 1);
  const logs = points.map(([, ssr]) => Math.log10(ssr));
  let lo = Math.min(...logs);
  let hi = Math.max(...logs);
  const pad = Math.max(0.05 * (hi - lo), 0.25);
  lo -= pad;
  hi += pad;
  const X = (step) => box.left + ((step - first) / (last - first)) * (box.right - box.left);
  const Y = (log) => box.bottom - ((log - lo) / (hi - lo)) * (box.bottom - box.top);
  ctx.fillStyle = "#444";
  ctx.strokeStyle = "#e3e3e3";
  ctx.textAlign = "right";
  ctx.textBaseline = "middle";
  const every = Math.max(1, Math.ceil((Math.ceil(hi) - Math.floor(lo)) / 6));
  for (let decade = Math.ceil(lo); decade <= hi; decade += 1) {
    if (decade % every) continue;
    ctx.beginPath();
    ctx.moveTo(box.left, Y(decade));
    ctx.lineTo(box.right, Y(decade));
    ctx.stroke();
    ctx.fillText(`1e${decade}`, box.left - 6, Y(decade));
  }
  ctx.textAlign = "center";
  ctx.textBaseline = "top";
  const stepTick = Math.max(1, niceStep(last - first, 6));
  for (let tick = Math.ceil(first / stepTick) * stepTick; tick <= last; tick += stepTick) {
    ctx.fillText(String(tick), X(tick), box.bottom + 6);
  }
  ctx.fillText("step", (box.left + box.right) / 2, box.bottom + 20);
  ctx.save();
  ctx.translate(14, (box.top + box.bottom) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText("SSR (log scale)", 0, -8);
  ctx.restore();
  ctx.strokeStyle = CURVE;
  ctx.fillStyle = CURVE;
  ctx.lineWidth = 2.5;
  ctx.lineJoin = "round";
  ctx.beginPath();
  points.forEach(([step], i) => (i ? ctx.lineTo(X(step), Y(logs[i])) : ctx.moveTo(X(step), Y(logs[i]))));
  ctx.stroke();
  if (points.length <= 60) {
    points.forEach(([step], i) => {
      ctx.beginPath();
      ctx.arc(X(step), Y(logs[i]), 3.5, 0, 2 * Math.PI);
      ctx.fill();
    });
  }
}

// --- the API key ------------------------------------------------------------------------------

function askForKey(message) {
  $("auth").hidden = false;
  $("auth-message").textContent = message;
  $("state").textContent = "waiting for an API key";
  $("key").focus();
}

$("auth").addEventListener("submit", (event) => {
  event.preventDefault();
  const key = $("key").value.trim();
  if (key) localStorage.setItem(KEY, key);
  else localStorage.removeItem(KEY);
  $("key").value = "";
  refresh();
});

for (const id of ["job-plot", "sweep-plot"]) {
  $(id).addEventListener("click", (event) => { if (event.target.src) window.open(event.target.src); });
}
window.addEventListener("hashchange", refresh);
refresh();
