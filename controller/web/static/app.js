// The zcrepl web view: fetches api/state every second and redraws. Everything shown comes from the
// controller as text (textContent only: paths and errors are agents' words, never markup). Sizes and rates
// come formatted by the controller (the *_text keys, core/units.py): one rule for the page and zc-ctl.
"use strict";

const PERIOD_MS = 1000;
const SVG = "http://www.w3.org/2000/svg";
let page = 0;
let pages = 1;
let timer = null;
let busy = false;
let again = false;
let leading = true;

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") e.className = v; else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function duration(s) {
  if (!isFinite(s) || s < 0) return "-";
  if (s < 60) return `${Math.round(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${Math.round(s % 60)}s`;
  if (s < 86400) return `${(s / 3600).toFixed(1)}h`;
  return `${(s / 86400).toFixed(1)}d`;
}

function ago(ts, now) { return ts ? `${duration(now - ts)} ago` : "-"; }

function spark(values, ceiling) {
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 90 20");
  svg.setAttribute("preserveAspectRatio", "none");
  if (values.length > 1) {
    const top = ceiling || Math.max(...values, 1e-9);
    const step = 90 / (values.length - 1);
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("points", values.map((v, i) =>
      `${(i * step).toFixed(1)},${(19 - (v / top) * 18).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  return svg;
}

function bar(done, total, totalText, paused) {
  const pct = total > 0 ? Math.min(100, (100 * done) / total) : 0;
  const fill = el("div", { class: paused ? "fill paused" : "fill" });
  fill.style.width = `${pct.toFixed(1)}%`;
  return el("div", { class: "bar", "data-percent": pct.toFixed(1) }, fill,
    el("div", { class: "label" }, total > 0 ? `${pct.toFixed(0)}% of ${totalText}` : "scanning…"));
}

function fill(id, rows, columns, empty) {
  const body = document.querySelector(`#${id} tbody`);
  const fresh = document.createElement("tbody");
  fresh.append(...(rows.length ? rows
    : [el("tr", {}, el("td", { class: "empty", colspan: String(columns) }, empty))]));
  // Rows that did not change stay as they are, so a selection (a path being copied) survives the refresh.
  if (fresh.innerHTML !== body.innerHTML) body.replaceChildren(...fresh.childNodes);
}

function count(id, shown, total) {
  document.getElementById(id).textContent = total > shown ? `(${shown} of ${total})` : `(${total})`;
}

function route(j) { return el("td", { class: "path" }, `${j.source} → ${j.destination}`); }

function chip(label, value, cls) {
  return el("span", { class: cls ? `chip ${cls}` : "chip" }, `${label} `, el("b", {}, String(value)));
}

function summary(s) {
  const a = s.agents, j = s.jobs, r = s.rules;
  const chips = [
    chip("agents online", `${a.online}/${a.total}`, a.offline ? "bad" : ""),
    chip("need attention", a.attention, a.attention ? "warn" : ""),
    chip("running", j.running), chip("queued", j.queued), chip("done", j.done),
    chip("failed", j.failed, j.failed ? "bad" : ""),
    chip("watch rules", r.total),
  ];
  if (r.total) chips.push(chip("max lag", duration(r.max_lag), r.max_lag > 300 ? "warn" : ""));
  const sc = s.schedules;
  if (sc.total) chips.push(chip("schedules", sc.paused ? `${sc.total} (${sc.paused} paused)` : sc.total));
  for (const [kind, n] of Object.entries(s.waiting)) chips.push(chip(`waiting: ${kind.replace("_", " ")}`, n));
  document.getElementById("summary").replaceChildren(...chips);
}

function hosts(h, now) {
  pages = h.pages;
  page = h.page;
  fill("hosts", h.items.map((x) => {
    const hh = x.health;
    const state = el("span", { class: `badge ${x.online ? "online" : "offline"}` }, x.online ? "online" : "offline");
    const cells = hh ? [
      el("td", { class: "num" }, `${hh.cpu_percent.toFixed(0)}%`), el("td", {}, spark(x.history.cpu, 100)),
      el("td", { class: "num" }, (hh.load1 / Math.max(1, hh.cpu_count)).toFixed(2)),
      el("td", { class: "num" }, hh.mem_available_text),
      el("td", { class: "num" }, hh.active_transfers ? `${hh.active_transfers} · ${hh.transfer_rate_text}` : "0"),
      el("td", {}, spark(x.history.transfer_bps)),
      el("td", { class: "path" }, hh.fullest_export
        ? `${hh.fullest_export.path} ${hh.fullest_export.percent.toFixed(0)}% (${hh.fullest_export.free_text} free)`
        : "-"),
    ] : [el("td", { class: "empty", colspan: "7" },
      leading ? "no health reported yet" : "live health is in the leader's view")];
    return el("tr", { id: `host-${x.name}`, "data-online": String(x.online) },
      el("td", {}, el("b", {}, x.name)), el("td", {}, state),
      el("td", { class: "attention" }, x.attention.join("; ")), ...cells,
      el("td", { class: "num" }, `${duration(x.seen_ago)} ago`));
  }), 11, "no agent has registered yet");
  count("hosts-count", h.items.length, h.total);
  document.getElementById("page").textContent = `page ${h.page + 1} of ${h.pages}`;
  document.querySelector(".pager").hidden = h.pages <= 1;
  document.getElementById("prev").disabled = h.page === 0;
  document.getElementById("next").disabled = h.page >= h.pages - 1;
}

function running(r, now) {
  fill("running", r.items.map((j) => {
    const left = j.rate_bps > 0 && j.bytes_total ? (j.bytes_total - j.bytes_done) / j.rate_bps : NaN;
    const rate = j.paused ? "paused" : j.rate_text;
    return el("tr", { id: `job-${j.id}`, "data-state": "running" },
      el("td", { class: "num" }, `#${j.id}`), route(j), el("td", {}, bar(j.bytes_done, j.bytes_total, j.bytes_total_text, j.paused)),
      el("td", { class: "num" }, j.bwlimit ? `${rate} (cap ${j.bwlimit_text})` : rate),
      el("td", { class: "num" }, `${j.files_done}/${j.files_total}${j.scan_done ? "" : "+"}`),
      el("td", { class: "num" }, `${j.attempt}/${j.max_attempts}`),
      el("td", { class: "num" }, duration(left)));
  }), 7, "nothing running");
  count("running-count", r.items.length, r.total);
}

function waiting(w) {
  fill("waiting", w.items.map((j) => el("tr", { id: `job-${j.id}`, "data-state": "queued" },
    el("td", { class: "num" }, `#${j.id}`), route(j), el("td", {}, j.priority),
    el("td", { class: "reason" }, j.retry_in ? `${j.reason} (retry in ${duration(j.retry_in)})` : j.reason),
    el("td", { class: "num" }, duration(j.waited)))), 5, "nothing waiting");
  count("waiting-count", w.items.length, w.total);
}

function failed(f, now) {
  fill("failed", f.items.map((j) => el("tr", { id: `job-${j.id}`, "data-state": "failed" },
    el("td", { class: "num" }, `#${j.id}`), route(j), el("td", { class: "err" }, j.error),
    el("td", { class: "num" }, String(j.attempts)), el("td", { class: "num" }, ago(j.finished_at, now)))),
  5, "no failed job");
  count("failed-count", f.items.length, f.total);
}

function finished(f, now) {
  fill("finished", f.items.map((j) => el("tr", { id: `job-${j.id}`, "data-state": j.state },
    el("td", { class: "num" }, `#${j.id}`), route(j),
    el("td", {}, el("span", { class: `badge ${j.state}` }, j.skipped ? `${j.state} (${j.skipped} skipped)` : j.state)),
    el("td", { class: "num" }, j.bytes_done_text), el("td", { class: "num" }, String(j.files_done)),
    el("td", { class: "num" }, ago(j.finished_at, now)))), 6, "no job has finished yet");
}

function rules(r) {
  fill("rules", r.items.map((x) => el("tr", { id: `rule-${x.id}` },
    el("td", { class: "num" }, `#${x.id}`),
    el("td", { class: "path" }, `${x.source} → ${x.destinations.join(", ")}`),
    el("td", {}, x.state === "paused" ? el("span", { class: "badge paused" }, "paused") : x.status),
    el("td", { class: "num" }, duration(x.lag)), el("td", { class: "num" }, String(x.pending)),
    el("td", { class: "num" }, x.bytes_text), el("td", { class: "err" }, x.last_error))),
  7, "no watch rule");
  count("rules-count", r.items.length, r.total);
}

function dueIn(x, now) {
  if (x.paused) return el("span", { class: "badge paused" }, "paused");
  if (!x.next_due) return "-";
  const left = x.next_due - now;
  return `${x.next_due_text} (${left > 0 ? `in ${duration(left)}` : "due now"})`;
}

function lastRun(x, now) {
  if (!x.last_job_id) return "never run";
  const state = el("span", { class: `badge ${x.last_state}` }, x.last_state);
  return el("span", {}, `#${x.last_job_id} `, state, ` ${ago(x.last_run_at, now)}`);
}

function schedules(sc, now) {
  fill("schedules", sc.items.map((x) => el("tr", { id: `schedule-${x.id}`, "data-paused": String(x.paused) },
    el("td", { class: "num" }, `#${x.id}`), el("td", { class: "path" }, x.when),
    el("td", { class: "path" }, `${x.source} → ${x.destination}`), el("td", { class: "due" }, dueIn(x, now)),
    el("td", { class: "last" }, lastRun(x, now)), el("td", { class: "num" }, String(x.skips)),
    el("td", { class: "err" }, [x.last_error, x.note, x.last_skip].filter(Boolean).join("; ")))),
  7, "no schedule");
  count("schedules-count", sc.items.length, sc.total);
}

// A follower shows what the store holds; the live view (health, rates, lag) is the leader's.
function role(r) {
  leading = !r || r.leading;
  const box = document.getElementById("role");
  box.hidden = leading;
  if (!leading) {
    box.textContent = `This controller (${r.me || "?"}) follows: jobs, agents and rules as stored. ` +
      (r.leader ? `The leader is ${r.leader}: its web view shows live health, rates and lag.`
                : "No controller leads right now (a failover is under way).");
  }
}

function schedule(ms) {
  clearTimeout(timer);
  timer = setTimeout(refresh, ms);
}

async function refresh() {
  if (busy) { again = true; return; }  // one fetch at a time, however the pager is clicked
  busy = true;
  const status = document.getElementById("status");
  try {
    const resp = await fetch(`api/state?page=${page}`, { cache: "no-store" });
    if (!resp.ok) throw new Error(`${resp.status} ${(await resp.text()).trim()}`);
    const s = await resp.json();
    const now = s.generated_at;
    role(s.role);
    summary(s.summary);
    hosts(s.hosts, now);
    running(s.running, now);
    waiting(s.waiting);
    failed(s.failed, now);
    finished(s.finished, now);
    rules(s.rules);
    schedules(s.schedules, now);
    status.className = "status";
    status.textContent = `updated ${new Date(now * 1000).toLocaleTimeString()}`;
  } catch (err) {
    status.className = "status down";
    status.textContent = `cannot reach the controller (${err.message}); retrying every second`;
  } finally {
    busy = false;
    schedule(again ? 0 : PERIOD_MS);
    again = false;
  }
}

document.getElementById("prev").addEventListener("click", () => { if (page > 0) { page--; schedule(0); } });
document.getElementById("next").addEventListener("click", () => { if (page < pages - 1) { page++; schedule(0); } });
refresh();
