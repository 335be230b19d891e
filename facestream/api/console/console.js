// The facestream web console: the streams table and add form (#/), a page per stream
// (#/streams/ID) with the latest analysed frame, the faces in view, a timeline per track and
// the live event feed.  Plain JavaScript on the API of docs/API.md; no dependencies.
"use strict";

const EXPRESSIONS = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"];
const COLORS = {
  neutral: "#8a94a6", happy: "#e8a400", sad: "#3b7dd8", surprise: "#a25ddc",
  fear: "#1aa394", disgust: "#6a9a3a", anger: "#e0453a",
};
const TOKEN_KEY = "facestream.token";
const POLL_MS = 2000;
const FEED_ITEMS = 150;

const view = { timers: [], source: null, stream: null, feedList: null, generation: 0,
               snapshotBusy: false };
let tokenPrompt = null;

// --- small helpers ---------------------------------------------------------------------------

function $(id) { return document.getElementById(id); }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, value);
  return node;
}

function num(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function ago(epochSeconds) {
  if (!epochSeconds) return "–";
  const s = Math.max(0, Date.now() / 1000 - epochSeconds);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function clock(isoTime) {
  const when = isoTime ? new Date(isoTime) : new Date();
  return when.toLocaleTimeString([], { hour12: false });
}

function ageText(age) {
  if (!age || age.years === null || age.years === undefined) return "–";
  const range = age.low !== null && age.high !== null ? ` (${Math.round(age.low)}–${Math.round(age.high)})` : "";
  return `${Math.round(age.years)}${range}`;
}

function genderText(gender) {
  if (!gender || !gender.label) return "–";
  return gender.score === null || gender.score === undefined
    ? gender.label : `${gender.label} ${Math.round(gender.score * 100)}%`;
}

// --- the API, with the token asked for once ---------------------------------------------------

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function askToken() {
  if (!tokenPrompt) {
    tokenPrompt = new Promise((resolve) => {
      const modal = $("token-modal");
      modal.hidden = false;
      $("token-input").focus();
      $("token-form").onsubmit = (event) => {
        event.preventDefault();
        const value = $("token-input").value.trim();
        if (!value) return;
        sessionStorage.setItem(TOKEN_KEY, value);
        // EventSource and <img> cannot send a header: the API also reads this cookie.
        document.cookie = `facestream_token=${value}; path=/api; SameSite=Strict`;
        modal.hidden = true;
        tokenPrompt = null;
        resolve();
        restartFeed();
      };
    });
  }
  return tokenPrompt;
}

async function api(method, path, body) {
  for (;;) {
    const headers = { Accept: "application/json" };
    if (token()) headers.Authorization = `Bearer ${token()}`;
    const init = { method, headers };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let reply;
    try {
      reply = await fetch(path, init);
    } catch (err) {
      return { ok: false, status: 0, data: { error: "the server does not answer", field: null } };
    }
    if (reply.status === 401) {
      await askToken();
      continue;
    }
    let data = null;
    if (reply.status !== 204) {
      try { data = await reply.json(); } catch (err) { data = null; }
    }
    return { ok: reply.ok, status: reply.status, data,
             lastEntry: reply.headers.get("X-Last-Entry-ID") };
  }
}

// --- routing ----------------------------------------------------------------------------------

function every(ms, fn) {
  fn();
  view.timers.push(setInterval(fn, ms));
}

function leave() {
  view.timers.forEach(clearInterval);
  view.timers = [];
  if (view.source) view.source.close();
  view.source = null;
  view.feedList = null;
  view.generation += 1;
}

function route() {
  leave();
  const match = location.hash.match(/^#\/streams\/([A-Za-z0-9_][A-Za-z0-9._-]*)$/);
  $("page-streams").hidden = Boolean(match);
  $("page-stream").hidden = !match;
  const crumbs = $("crumbs");
  crumbs.replaceChildren();
  if (match) {
    view.stream = match[1];
    crumbs.append(el("a", { href: "#/", text: "Streams" }), " / ", view.stream);
    openStream(view.stream);
  } else {
    view.stream = null;
    crumbs.append("Streams");
    openStreams();
  }
}

// --- the live event feed ----------------------------------------------------------------------

function summary(event) {
  const d = event.data || {};
  switch (event.type) {
    case "facestream.face.analysis": {
      const a = d.attributes || {};
      return ["analysis", `${d.track_id}  ${(d.expression || {}).label || "?"} · ${genderText(a.gender)} · age ${ageText(a.age)}`];
    }
    case "facestream.face.description": return ["description", `${d.track_id}  “${d.description}”`];
    case "facestream.track.started": return ["track", `${d.track_id} appeared at ${num(d.time_s, 1)} s`];
    case "facestream.track.ended": return ["track", `${d.track_id} left at ${num(d.time_s, 1)} s`];
    case "facestream.stream.error": return ["error", d.message || "error"];
    case "facestream.stream.status": {
      const reason = d.reason ? ` — ${d.reason}` : "";
      const attempt = d.attempt ? ` (attempt ${d.attempt})` : "";
      return ["status", `${d.state}${attempt}${reason}`];
    }
    default: return ["other", event.type];
  }
}

const KIND_NAMES = { analysis: "analysis", description: "description", track: "track",
                     error: "error", status: "status", other: "event" };

function addToFeed(list, event) {
  const [kind, text] = summary(event);
  const item = el("li", { "data-type": event.type },
    el("span", { class: "t", text: clock(event.time) }),
    el("span", { class: "s", text: (event.data || {}).stream_id || "" }),
    el("span", { class: `kind ${kind}`, text: KIND_NAMES[kind] }),
    el("span", { class: "m", text }));
  list.prepend(item);
  while (list.children.length > FEED_ITEMS) list.lastChild.remove();
}

async function startFeed(list, stream) {
  const generation = view.generation;
  const query = stream ? `stream=${encodeURIComponent(stream)}&` : "";
  const recent = await api("GET", `/api/v1/events?${query}limit=30`);
  if (generation !== view.generation || view.source) return;      // the page changed meanwhile
  let after = "";
  if (recent.ok) {
    recent.data.forEach((event) => addToFeed(list, event));
    after = recent.lastEntry ? `after=${encodeURIComponent(recent.lastEntry)}&` : "";
  }
  const source = new EventSource(`/api/v1/events/stream?${query}${after}`.replace(/[?&]$/, ""));
  const live = $("live");
  source.onopen = () => { live.classList.add("on"); $("live-text").textContent = "live"; };
  source.onerror = () => { live.classList.remove("on"); $("live-text").textContent = "reconnecting"; };
  source.onmessage = (message) => {
    try { addToFeed(list, JSON.parse(message.data)); } catch (err) { /* not an event */ }
  };
  view.source = source;
}

function restartFeed() {
  if (view.source && view.feedList) {
    view.source.close();
    view.source = null;
    view.feedList.replaceChildren();
    startFeed(view.feedList, view.stream);
  }
}

// --- #/ : streams -----------------------------------------------------------------------------

function badge(state) { return el("span", { class: `badge ${state}`, text: state }); }

function removeButton(id, after, label = "Remove") {
  const button = el("button", { class: "small danger", text: label, "data-remove": id });
  let armed = null;
  button.addEventListener("click", async () => {
    if (!armed) {
      button.textContent = "Confirm remove";
      armed = setTimeout(() => { armed = null; button.textContent = label; }, 4000);
      return;
    }
    clearTimeout(armed);
    button.disabled = true;
    if (view.stream === id) leave();        // its page stops asking for it first
    const reply = await api("DELETE", `/api/v1/streams/${encodeURIComponent(id)}`);
    if (!reply.ok && reply.status !== 404) {
      button.disabled = false;
      button.textContent = label;
      armed = null;
      alertError(reply.data);
      return;
    }
    after();
  });
  return button;
}

function alertError(data) {
  const box = $("add-error");
  box.textContent = (data && data.error) || "the request failed";
  box.hidden = false;
}

async function refreshStreams() {
  const reply = await api("GET", "/api/v1/streams");
  if (!reply.ok) return;
  const rows = reply.data.map((s) => el("tr", { "data-stream": s.id },
    el("td", {},
      el("a", { href: `#/streams/${s.id}`, class: "mono", text: s.id }),
      s.last_error ? el("div", { class: "err", text: s.last_error }) : null),
    el("td", { class: "state" }, badge(s.state)),
    el("td", { class: "src mono", title: s.url, text: s.url }),
    el("td", { class: "num", text: num(s.fps, 1) }),
    el("td", { class: "num", text: num(s.frames_per_s, 1) }),
    el("td", { class: "num", text: num(s.events_per_s, 1) }),
    el("td", { class: "num", text: s.faces === null ? "–" : String(s.faces) }),
    el("td", { class: "muted", text: ago(s.last_frame_at) }),
    el("td", { class: "muted mono", text: s.worker || "–" }),
    el("td", { class: "actions" },
      el("a", { href: `#/streams/${s.id}`, class: "open", text: "Open" }), " ",
      removeButton(s.id, refreshStreams))));
  $("streams-body").replaceChildren(...rows);
  $("streams-empty").hidden = rows.length > 0;
  $("streams-table").hidden = rows.length === 0;
  $("streams-count").textContent = `${rows.length} registered`;
}

const FIELD_INPUTS = { id: "add-id", url: "add-url", fps: "add-fps", profile: "add-profile" };

async function addStream(event) {
  event.preventDefault();
  Object.values(FIELD_INPUTS).forEach((id) => $(id).classList.remove("invalid"));
  $("add-error").hidden = true;
  const body = { id: $("add-id").value.trim(), url: $("add-url").value.trim(),
                 profile: $("add-profile").value };
  const fps = parseFloat($("add-fps").value);
  if (!Number.isNaN(fps)) body.fps = fps;
  $("add-submit").disabled = true;
  const reply = await api("POST", "/api/v1/streams", body);
  $("add-submit").disabled = false;
  if (reply.ok) {
    $("add-id").value = "";
    $("add-url").value = "";
    refreshStreams();
    return;
  }
  alertError(reply.data);
  const field = reply.data && FIELD_INPUTS[reply.data.field];
  if (field) $(field).classList.add("invalid");
}

function openStreams() {
  $("feed-all").replaceChildren();
  view.feedList = $("feed-all");
  every(POLL_MS, refreshStreams);
  startFeed(view.feedList, null);
}

// --- #/streams/ID : one stream ----------------------------------------------------------------

function stat(label, value) {
  return el("div", { class: "stat" }, el("b", { text: value }), el("span", { text: label }));
}

async function refreshStream(id) {
  const reply = await api("GET", `/api/v1/streams/${encodeURIComponent(id)}`);
  if (reply.status === 404) {
    $("stream-title").replaceChildren(id, " ", badge("removed"));
    $("stream-url").textContent = "This stream is not registered.";
    $("stream-stats").replaceChildren();
    leave();
    return;
  }
  if (!reply.ok) return;
  const s = reply.data;
  $("stream-title").replaceChildren(s.id, " ", badge(s.state));
  $("stream-url").textContent = `${s.url}  ·  ${num(s.fps, 1)} fps  ·  ${s.profile}`;
  $("stream-stats").replaceChildren(
    stat("frames/s", num(s.frames_per_s, 1)), stat("events/s", num(s.events_per_s, 1)),
    stat("faces", s.faces === null ? "–" : String(s.faces)), stat("last frame", ago(s.last_frame_at)),
    stat("worker", s.worker || "–"));
  if (s.last_error) $("stream-stats").append(stat("last error", s.last_error));
  if (s.snapshot) loadSnapshot(id);
}

function loadSnapshot(id) {
  if (view.snapshotBusy) return;
  view.snapshotBusy = true;
  const img = $("snapshot");
  img.onload = () => {
    view.snapshotBusy = false;
    img.hidden = false;
    $("snapshot-none").hidden = true;
    $("snapshot-age").textContent = `updated ${clock()}`;
  };
  img.onerror = () => { view.snapshotBusy = false; };
  img.src = `/api/v1/streams/${encodeURIComponent(id)}/snapshot.jpg?t=${Date.now()}`;
}

function faceCard(track) {
  const label = track.expression || "?";
  const scores = track.scores || {};
  const bar = el("div", { class: "scorebar", title: "expression scores" },
    ...EXPRESSIONS.map((name) => el("span", {
      style: `width:${Math.max(0, (scores[name] || 0) * 100).toFixed(1)}%;background:${COLORS[name]}`,
      title: `${name} ${Math.round((scores[name] || 0) * 100)}%` })));
  return el("div", { class: track.current ? "face" : "face gone", "data-track": track.track_id },
    el("div", { class: "face-top" },
      el("span", { class: "face-id", text: track.track_id }),
      el("span", { class: "expr", "data-expression": label, text: label,
                   style: `background:${COLORS[label] || "#6b7686"}` })),
    el("div", { class: "attrs" },
      el("span", {}, "gender ", el("b", { class: "gender", text: genderText(track.gender) })),
      el("span", {}, "age ", el("b", { class: "age", text: ageText(track.age) }))),
    bar,
    track.description ? el("div", { class: "desc", text: track.description }) : null);
}

function timelinePlot(track, width) {
  const points = track.timeline.filter((p) => p.start_s !== null && p.scores);
  const height = 150, left = 34, right = 10, top = 8, bottom = 26;
  const plot = svg("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
                             "aria-label": `expression timeline of ${track.track_id}` });
  if (!points.length) return plot;
  const t0 = points[0].start_s;
  const t1 = Math.max(points[points.length - 1].end_s || t0, t0 + 1);
  const x = (t) => left + ((t - t0) / (t1 - t0)) * (width - left - right);
  const y = (v) => top + (1 - v) * (height - top - bottom - 16);
  for (const v of [0, 0.5, 1]) {
    plot.append(svg("line", { x1: left, x2: width - right, y1: y(v), y2: y(v), stroke: "#e3e8ef" }));
    const label = svg("text", { x: left - 6, y: y(v) + 3, "text-anchor": "end" });
    label.textContent = v.toFixed(1);
    plot.append(label);
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const tick = svg("text", { x: x(t), y: height - 4, "text-anchor": i === 0 ? "start" : i === 4 ? "end" : "middle" });
    tick.textContent = `${t.toFixed(1)} s`;
    plot.append(tick);
  }
  const strip = height - bottom - 7;
  for (const p of points) {
    const rect = svg("rect", { x: x(p.start_s), y: strip, height: 6,
                               width: Math.max(1, x(p.end_s || p.start_s) - x(p.start_s)),
                               fill: COLORS[p.label] || "#c5ccd6" });
    const tip = svg("title", {});
    tip.textContent = `${p.start_s.toFixed(1)}–${num(p.end_s, 1)} s: ${p.label}`;
    rect.append(tip);
    plot.append(rect);
  }
  for (const name of EXPRESSIONS) {
    const path = points.map((p) => `${x((p.start_s + (p.end_s || p.start_s)) / 2).toFixed(1)},${y(p.scores[name] || 0).toFixed(1)}`);
    const line = svg(points.length > 1 ? "polyline" : "circle", points.length > 1
      ? { points: path.join(" "), fill: "none", stroke: COLORS[name], "stroke-width": 1.8,
          "stroke-linejoin": "round", "data-expression": name }
      : { cx: path[0].split(",")[0], cy: path[0].split(",")[1], r: 3, fill: COLORS[name] });
    plot.append(line);
  }
  return plot;
}

async function refreshTracks(id) {
  const reply = await api("GET", `/api/v1/tracks?stream=${encodeURIComponent(id)}`);
  if (!reply.ok) return;
  const tracks = reply.data;
  const analysed = tracks.filter((t) => t.expression);
  const current = analysed.filter((t) => t.current);
  const shown = current.length ? current : analysed.slice(0, 3);
  $("faces").replaceChildren(...shown.map(faceCard));
  $("faces-empty").hidden = shown.length > 0;
  $("faces-count").textContent = current.length ? `${current.length} in view`
    : shown.length ? "none in view; recently seen" : "";
  const box = $("timelines");
  const width = Math.max(320, box.clientWidth || 900);
  const withWindows = tracks.filter((t) => t.timeline.length);
  box.replaceChildren(...withWindows.map((t) => el("div", { class: "timeline", "data-track": t.track_id },
    el("div", { class: "timeline-head" },
      el("b", { class: "mono", text: t.track_id }),
      el("span", { class: "muted", text: t.current ? "in view" : `left at ${num(t.ended_s, 1)} s` }),
      el("span", { class: "muted", text: `${t.timeline.length} windows · ${genderText(t.gender)} · age ${ageText(t.age)}` })),
    timelinePlot(t, width))));
  $("timelines-empty").hidden = withWindows.length > 0;
}

function openStream(id) {
  $("snapshot").hidden = true;
  $("snapshot").removeAttribute("src");
  $("snapshot-none").hidden = false;
  $("snapshot-age").textContent = "";
  view.snapshotBusy = false;
  $("feed-stream").replaceChildren();
  $("feed-stream-label").textContent = id;
  const fresh = removeButton(id, () => { location.hash = "#/"; }, "Remove stream");
  fresh.id = "stream-remove";
  fresh.className = "danger";
  $("stream-remove").replaceWith(fresh);
  view.feedList = $("feed-stream");
  every(POLL_MS, () => refreshStream(id));
  every(POLL_MS, () => refreshTracks(id));
  startFeed(view.feedList, id);
}

// --- start ------------------------------------------------------------------------------------

function legend() {
  $("legend").replaceChildren(...EXPRESSIONS.map((name) =>
    el("span", {}, el("i", { style: `background:${COLORS[name]}` }), name)));
}

document.addEventListener("DOMContentLoaded", () => {
  $("add-form").addEventListener("submit", addStream);
  legend();
  window.addEventListener("hashchange", route);
  route();
});
