// llamashare dashboard: renders the daemon's /api/v1/events stream; every control is an API call.
"use strict";

const KEEP_SECONDS = 600; // the charts' window: the daemon keeps as much history
const $ = (selector, root = document) => root.querySelector(selector);
const cards = new Map(); // release name -> {el, points: [[t, up, down], ...]}
let totalPoints = [];

// ------------------------------------------------------------------ formatting

function size(bytes) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let n = bytes, i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n.toFixed(0)} B` : `${n.toFixed(1)} ${units[i]}`;
}
const rate = (bytes) => `${size(bytes)}/s`;

function duration(seconds) {
  if (seconds == null) return "–";
  const h = Math.floor(seconds / 3600), m = Math.floor((seconds % 3600) / 60);
  return h ? `${h} h ${m} min` : m ? `${m} min` : `${Math.floor(seconds)} s`;
}

function toast(text, bad = false) {
  const el = $("#toast");
  el.textContent = text;
  el.classList.toggle("bad", bad);
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { el.textContent = ""; }, bad ? 8000 : 3000);
}

// ------------------------------------------------------------------ the API

// The session cookie alone does not open the API: every call also carries this page's key,
// which the login link handed over in the URL fragment (never sent to any server) and which
// lives only in this tab. A process that got hold of the cookie has no key.
const PAGE_KEY = (() => {
  const fromLink = new URLSearchParams(location.hash.slice(1)).get("key");
  if (fromLink) {
    sessionStorage.setItem("llamashare-key", fromLink);
    history.replaceState(null, "", "/");
  }
  return sessionStorage.getItem("llamashare-key") || "";
})();

async function api(method, path, body) {
  const headers = { "X-Llamashare-Key": PAGE_KEY };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const doc = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(doc.error || `${response.status} ${response.statusText}`);
  return doc;
}

async function act(what, method, path, body) {
  try {
    await api(method, path, body);
    toast(what);
  } catch (err) {
    toast(err.message, true);
  }
}

const releasePath = (name) => `/api/v1/releases/${encodeURIComponent(name)}`;

// ------------------------------------------------------------------ charts

function drawChart(canvas, points, now) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth, height = canvas.clientHeight || canvas.height;
  if (!width) return;
  canvas.width = Math.round(width * ratio);
  canvas.height = Math.round(height * ratio);
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, width, height);
  const style = getComputedStyle(document.documentElement);
  const top = Math.max(1, ...points.map((p) => Math.max(p[1], p[2])));
  // The window grows with the history, from one minute up to KEEP_SECONDS.
  const span = Math.min(KEEP_SECONDS, Math.max(60, points.length ? now - points[0][0] : 0));
  const x = (t) => width - ((now - t) / span) * width;
  const y = (v) => height - 2 - (v / top) * (height - 14);
  g.strokeStyle = style.getPropertyValue("--line");
  g.beginPath(); g.moveTo(0, height - 1.5); g.lineTo(width, height - 1.5); g.stroke();
  for (const [column, colour] of [[2, "--down"], [1, "--up"]]) {
    g.strokeStyle = style.getPropertyValue(colour);
    g.lineWidth = 1.5;
    g.beginPath();
    points.forEach((p, i) => (i ? g.lineTo(x(p[0]), y(p[column])) : g.moveTo(x(p[0]), y(p[column]))));
    g.stroke();
  }
  g.fillStyle = style.getPropertyValue("--muted");
  g.font = "10px system-ui, sans-serif";
  g.fillText(`↓ ↑ peak ${rate(top)} · last ${Math.round(span / 60)} min`, 4, 10);
}

function keepRecent(points, now) {
  while (points.length && points[0][0] < now - KEEP_SECONDS) points.shift();
}

// ------------------------------------------------------------------ one release

function makeCard(name) {
  const el = $("#release-template").content.firstElementChild.cloneNode(true);
  el.dataset.name = name;
  $(".name", el).textContent = name;
  for (const input of el.querySelectorAll("input")) input.addEventListener("input", () => { input.dataset.dirty = "1"; });
  $(".pause", el).addEventListener("click", () => {
    const paused = el.dataset.paused === "true";
    act(paused ? `${name}: resumed` : `${name}: paused`, "PATCH", releasePath(name), { paused: !paused });
  });
  $(".controls", el).addEventListener("submit", (event) => {
    event.preventDefault();
    const ratioText = $(".ratio-input", el).value.trim(), hoursText = $(".time-input", el).value.trim();
    const body = {
      ratio: ratioText === "" ? null : Number(ratioText),
      seed_time: hoursText === "" ? null : Number(hoursText) * 3600,
    };
    for (const input of el.querySelectorAll("input")) delete input.dataset.dirty;
    act(`${name}: targets set`, "PATCH", releasePath(name), body);
  });
  $(".remove", el).addEventListener("click", () => {
    if (confirm(`Stop ${name} and remove it from the daemon? Its files stay on disk (llamashare rm deletes them).`)) {
      act(`${name}: removed from the daemon`, "DELETE", releasePath(name));
    }
  });
  return { el, points: [] };
}

function setInput(input, value) {
  if (document.activeElement === input || input.dataset.dirty) return; // the user is typing
  input.value = value;
}

function updateCard(card, r, now) {
  const el = card.el;
  const target = r.ratio_target, ratio = r.ratio ?? 0;
  el.dataset.state = r.state;
  el.dataset.paused = String(Boolean(r.paused));
  $(".meta", el).textContent = [r.version && `version ${r.version}`, r.license, r.size != null && size(r.size)]
    .filter(Boolean).join(" · ");
  const base = $(".base", el);
  base.hidden = !r.base;
  if (r.base) {
    base.textContent = `delta on ${r.base.name} · base license ${r.base.license ?? "unknown (not in the store)"}`
      + ` · base manifest ${r.base.manifest_sha256.slice(0, 12)}…`;
    base.title = `base manifest SHA-256 ${r.base.manifest_sha256}`;
  }
  const state = $(".state", el);
  state.textContent = r.state;
  state.className = `state ${r.state.replace(" ", "-")}`;

  // The ring: ratio against its target (or against 1 when seeding forever).
  const filled = Math.min(1, target ? ratio / target : ratio);
  const ring = $(".ring", el);
  $(".fill", el).setAttribute("stroke-dasharray", `${(filled * 100).toFixed(1)} 100`);
  ring.classList.toggle("reached", Boolean(target) && ratio >= target);
  $(".ring-text", el).textContent = r.in_daemon ? ratio.toFixed(2) : "–";
  $(".ring-title", el).textContent = target ? `ratio ${ratio.toFixed(2)} of ${target}` : `ratio ${ratio.toFixed(2)}`;

  // Progress: the running convert/quantize step, else the download.
  const step = r.activity;
  const progress = $(".progress", el);
  if (step && step.total) {
    progress.value = step.done / step.total;
    $(".step", el).textContent = `${step.title}: ${Math.round((100 * step.done) / step.total)} %`;
  } else {
    progress.value = r.progress ?? (r.in_daemon ? 0 : 1);
    $(".step", el).textContent = r.in_daemon ? "" : "in the store, not in the daemon (llamashare fetch seeds it again)";
  }

  $(".down", el).textContent = r.in_daemon ? rate(r.download_rate) : "–";
  $(".up", el).textContent = r.in_daemon ? rate(r.upload_rate) : "–";
  $(".peers", el).textContent = r.in_daemon ? `${r.peers} (${r.seeds} seeds)` : "–";
  $(".ratio", el).textContent = r.in_daemon ? `${ratio.toFixed(2)} / ${target ?? "∞"}` : "–";
  $(".seeded", el).textContent = r.in_daemon
    ? `${duration(r.seeded_seconds)}${r.seed_time ? ` / ${duration(r.seed_time)}` : ""}` : "–";

  const ggufs = $(".ggufs", el);
  ggufs.replaceChildren(...(r.ggufs || []).map((g) => {
    const li = document.createElement("li");
    li.textContent = `${g.file === r.default_gguf ? "▶ " : ""}${g.file} · ${size(g.size)}`;
    li.title = `llamashare run ${r.name}`;
    return li;
  }));
  $(".error", el).textContent = r.error || r.tracker_error || "";

  const controls = $(".controls", el);
  controls.hidden = !r.in_daemon;
  $(".pause", el).textContent = r.paused ? "Resume" : "Pause";
  $(".pause", el).disabled = r.state === "error";
  setInput($(".ratio-input", el), target ?? "");
  setInput($(".time-input", el), r.seed_time == null ? "" : (r.seed_time / 3600).toFixed(2).replace(/\.?0+$/, ""));
  drawChart($(".chart", el), card.points, now);
}

// ------------------------------------------------------------------ what `llamashare serve` serves

function renderServed(servers) {
  $("#served").hidden = servers.length === 0;
  $("#served-list").replaceChildren(...servers.map((server) => {
    const box = document.createElement("div");
    box.className = "server";
    const head = document.createElement("p");
    const link = document.createElement("a");
    link.href = `${server.url}/`; // the daemon passes only http://HOST:PORT
    link.textContent = server.url;
    link.target = "_blank";
    link.rel = "noopener noreferrer";
    head.append("llamashare serve on ", link, ` · pid ${server.pid} · its page has a chat`);
    const list = document.createElement("ul");
    for (const m of server.models) {
      const li = document.createElement("li");
      li.className = "served-model";
      li.dataset.id = m.id;
      li.textContent = `${m.id} · ${m.loaded ? "loaded" : "not loaded"} · ${m.running} running · `
        + `${m.waiting} waiting · ${m.steps} decode steps`;
      list.append(li);
    }
    box.append(head, list);
    return box;
  }));
}

// ------------------------------------------------------------------ the whole page

function render(doc) {
  const now = doc.time;
  if (doc.history) {
    totalPoints = doc.history.map((s) => [s.t, s.up, s.down]);
    for (const [name, card] of cards) card.points = [];
  } else {
    totalPoints.push([now, doc.up, doc.down]);
  }
  keepRecent(totalPoints, now);
  const node = doc.node;
  $("#node").textContent = `daemon ${node.version} · pid ${node.pid} · BitTorrent port ${node.listen_port}`;
  $("#down").textContent = rate(doc.down);
  $("#up").textContent = rate(doc.up);
  $("#count").textContent = `${doc.releases.length} release${doc.releases.length === 1 ? "" : "s"}`;
  drawChart($("#total-chart"), totalPoints, now);
  renderServed(doc.served || []);

  const list = $("#releases");
  const seen = new Set();
  for (const r of doc.releases) {
    seen.add(r.name);
    let card = cards.get(r.name);
    if (!card) {
      card = makeCard(r.name);
      cards.set(r.name, card);
      list.append(card.el);
    }
    if (doc.history) {
      card.points = doc.history.filter((s) => s.releases[r.name]).map((s) => [s.t, ...s.releases[r.name]]);
    } else if (r.in_daemon) {
      card.points.push([now, r.upload_rate, r.download_rate]);
    }
    keepRecent(card.points, now);
    updateCard(card, r, now);
  }
  for (const [name, card] of cards) {
    if (!seen.has(name)) { card.el.remove(); cards.delete(name); }
  }
  $("#empty").hidden = doc.releases.length > 0;
}

function connect() {
  const live = $("#live");
  const events = new EventSource(`/api/v1/events?key=${encodeURIComponent(PAGE_KEY)}`);
  events.onopen = () => { live.textContent = "live"; live.classList.remove("off"); };
  events.onmessage = (event) => render(JSON.parse(event.data));
  events.onerror = async () => {
    live.textContent = "reconnecting";
    live.classList.add("off");
    const check = await fetch("/api/v1/overview", { headers: { "X-Llamashare-Key": PAGE_KEY } }).catch(() => null);
    if (check && (check.status === 401 || check.status === 403)) {
      events.close();
      live.textContent = "signed out";
      toast("Signed out: run `llamashare dashboard` for a new link.", true);
    }
  };
}

async function addRelease(event) {
  event.preventDefault();
  const file = $("#add-file").files[0];
  const manifest = file ? await file.text() : $("#add-text").value;
  if (!manifest.trim()) { toast("Choose a manifest file or paste one.", true); return; }
  const ratioText = $("#add-ratio").value.trim();
  try {
    const doc = await api("POST", "/api/v1/releases", { manifest, ratio: ratioText === "" ? null : Number(ratioText) });
    toast(doc.added ? `${doc.name}: added, fetching` : `${doc.name}: already here (resumed)`);
    $("#add-form").reset();
  } catch (err) {
    toast(err.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("#add-form").addEventListener("submit", addRelease);
  window.addEventListener("resize", () => {
    const now = totalPoints.length ? totalPoints[totalPoints.length - 1][0] : Date.now() / 1000;
    drawChart($("#total-chart"), totalPoints, now);
    for (const card of cards.values()) drawChart($(".chart", card.el), card.points, now);
  });
  connect();
});
