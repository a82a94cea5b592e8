// Shared by every page: the JSON fetch helper, the live event stream (SSE),
// the #database-status banner, and the small DOM and formatting helpers.
// Every figure shown comes from the JSON API; no rule is computed here.
"use strict";

const FM = (() => {
  // Server clock minus ours (ms), so "12 s ago" is measured on the clock that
  // stamped the heartbeat, not on a browser clock that may be off.
  let clockOffset = 0;
  let databaseDown = false;
  const refreshers = [];

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : value);
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  const SVG_NS = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined) continue;
      if (key === "text") node.textContent = value;
      else if (key === "href") node.setAttributeNS("http://www.w3.org/1999/xlink", "href", value);
      else node.setAttribute(key, value);
    }
    for (const child of children.flat()) if (child) node.append(child);
    return node;
  }

  // --- the database banner -------------------------------------------------
  function setDatabaseStatus(message) {
    const banner = document.getElementById("database-status");
    const down = Boolean(message);
    if (banner) {
      banner.textContent = down ? message : "";
      banner.hidden = !down;
    }
    const wasDown = databaseDown;
    databaseDown = down;
    document.body.dataset.database = down ? "unreachable" : "reachable";
    if (wasDown && !down) refreshAll();
  }

  function databaseMessage(error) {
    const text = String(error || "").trim();
    return text.startsWith("database unreachable") ? text : `database unreachable: ${text || "no answer"}`;
  }

  // --- fetching the JSON API ---------------------------------------------
  class ApiError extends Error {
    constructor(status, message, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  function setAuthStatus(show) {
    const notice = document.getElementById("auth-status");
    if (notice) notice.hidden = !show;
  }

  async function api(path) {
    let response;
    try {
      response = await fetch(path, {credentials: "same-origin", cache: "no-store",
                                    headers: {Accept: "application/json"}});
    } catch (error) {
      // the dashboard server itself is gone: say so where the database banner is
      setDatabaseStatus("dashboard server unreachable");
      throw new ApiError(0, "dashboard server unreachable");
    }
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (response.status === 503) {
      setDatabaseStatus(databaseMessage(body && body.error));
      throw new ApiError(503, body && body.error, body);
    }
    setDatabaseStatus(null);
    setAuthStatus(response.status === 401);
    if (!response.ok) {
      throw new ApiError(response.status, (body && body.error) || `HTTP ${response.status}`, body);
    }
    const serverTime = Date.parse((body && body.generated_at) || response.headers.get("Date") || "");
    if (!Number.isNaN(serverTime)) {
      const offset = serverTime - Date.now();
      // the Date header has whole seconds: ignore an offset it cannot tell from jitter
      clockOffset = body && body.generated_at ? offset : (Math.abs(offset) > 2000 ? offset : 0);
    }
    return body;
  }

  // --- live updates ------------------------------------------------------
  // A page registers its refresh and which tetrahedrons concern it. A change
  // event for them (or for "any": tetrahedrons null) re-fetches, coalesced so
  // that a burst of heartbeats makes one or two fetches, never a queue.
  // At most one fetch every MIN_GAP_MS per page: a fleet sending thousands of
  // heartbeats a second costs the server a fetch a second per open page.
  const MIN_GAP_MS = 700;
  function coalesced(refresh, minGapMs = MIN_GAP_MS) {
    let running = false, pending = false, timer = null, lastRun = -Infinity;
    const run = async () => {
      timer = null;
      if (running) { pending = true; return; }
      running = true;
      lastRun = performance.now();
      try {
        await refresh();
      } catch (error) {
        // an API error is shown where it belongs; anything else is a bug: let it surface
        if (!(error instanceof ApiError)) setTimeout(() => { throw error; });
      }
      running = false;
      if (pending) { pending = false; schedule(0); }
    };
    const schedule = (delay = 60) => {
      if (timer !== null) return;
      timer = setTimeout(run, Math.max(delay, lastRun + minGapMs - performance.now()));
    };
    return schedule;
  }

  function refreshAll() { for (const r of refreshers) r.schedule(0); }

  let source = null;
  let restartDelay = 2000;  // after a refused stream: doubled up to 30 s, reset once one opens
  function connectEvents() {
    if (source) source.close();
    source = new EventSource("/api/events");
    let hadError = false;
    source.addEventListener("open", () => {
      setLiveState("live");
      restartDelay = 2000;
      if (hadError) refreshAll();  // changes made while we were away
      hadError = false;
    });
    source.addEventListener("error", () => {
      hadError = true;
      setLiveState("reconnecting");
      // EventSource retries by itself unless the answer was not an event
      // stream (a 401 once a JWT expired, a 503): then it gives up, and we
      // start over, less and less often.
      if (source.readyState === EventSource.CLOSED) {
        setTimeout(connectEvents, restartDelay);
        restartDelay = Math.min(restartDelay * 2, 30000);
      }
    });
    source.addEventListener("change", (event) => {
      let data = {};
      try { data = JSON.parse(event.data); } catch (_) { /* a change all the same */ }
      const about = Array.isArray(data.tetrahedrons) ? data.tetrahedrons : null;
      for (const r of refreshers) if (about === null || r.concerns(about)) r.schedule();
    });
    source.addEventListener("database", (event) => {
      let data = {};
      try { data = JSON.parse(event.data); } catch (_) { return; }
      if (data.reachable === false) setDatabaseStatus(databaseMessage(data.error));
      else if (data.reachable === true) setDatabaseStatus(null);
    });
  }

  function setLiveState(state) {
    const marker = document.getElementById("live-state");
    if (marker) {
      marker.textContent = state === "live" ? "\u25CF live" : "\u25CB reconnecting\u2026";
      marker.dataset.state = state;
    }
  }

  /**
   * live(refresh, concerns, everyMs): run refresh now, on every change event
   * that concerns(tetrahedrons) accepts, every two seconds while the database
   * is unreachable (so the page recovers by itself), and every everyMs anyway
   * (a silent node turns offline with no event: status is read as of now).
   */
  function live(refresh, concerns = () => true, everyMs = 20000, minGapMs = MIN_GAP_MS) {
    const entry = {schedule: coalesced(refresh, minGapMs), concerns};
    refreshers.push(entry);
    if (!source) connectEvents();
    entry.schedule(0);
    setInterval(() => { if (databaseDown) entry.schedule(0); }, 2000);
    setInterval(() => entry.schedule(0), everyMs);
    return entry.schedule;
  }

  // --- formatting ---------------------------------------------------------
  function serverNow() { return Date.now() + clockOffset; }

  function ago(iso) {
    if (!iso) return "never";
    const seconds = Math.max(0, Math.round((serverNow() - Date.parse(iso)) / 1000));
    if (seconds < 120) return `${seconds} s ago`;
    if (seconds < 7200) return `${Math.floor(seconds / 60)} min ago`;
    if (seconds < 172800) return `${Math.floor(seconds / 3600)} h ago`;
    return `${Math.floor(seconds / 86400)} d ago`;
  }

  function duration(fromIso, untilIso) {
    const end = untilIso ? Date.parse(untilIso) : serverNow();
    const seconds = Math.max(0, Math.round((end - Date.parse(fromIso)) / 1000));
    if (seconds < 120) return `${seconds} s`;
    if (seconds < 7200) return `${Math.floor(seconds / 60)} min`;
    if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }

  // Formatters made once: Intl is slow to set up, and a table of 1,000 rows
  // formats thousands of times.
  const FORMATS = {
    time: new Intl.DateTimeFormat([], {hour12: false, hour: "2-digit", minute: "2-digit", second: "2-digit"}),
    minute: new Intl.DateTimeFormat([], {hour12: false, hour: "2-digit", minute: "2-digit"}),
    day: new Intl.DateTimeFormat([], {month: "short", day: "numeric"}),
    dayMinute: new Intl.DateTimeFormat([], {hour12: false, month: "short", day: "numeric",
                                            hour: "2-digit", minute: "2-digit"}),
    full: new Intl.DateTimeFormat([], {hour12: false, year: "numeric", month: "short", day: "numeric",
                                       hour: "2-digit", minute: "2-digit", second: "2-digit"}),
  };

  function time(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    const sameDay = new Date(serverNow()).toDateString() === d.toDateString();
    return sameDay ? FORMATS.time.format(d) : FORMATS.dayMinute.format(d);
  }

  function number(value, digits = 2) {
    return value === null || value === undefined ? "\u2013" : Number(value).toFixed(digits);
  }

  // Relative times on the page ("12 s ago") tick every second, in place.
  function tickAges(root = document) {
    for (const node of root.querySelectorAll("[data-ago]")) {
      const text = ago(node.dataset.ago || null);
      if (node.textContent !== text) node.textContent = text;
    }
  }
  setInterval(() => tickAges(), 1000);

  function agoCell(iso, attrs = {}) {
    return el("span", {...attrs, "data-ago": iso || "", title: iso ? FORMATS.full.format(new Date(iso)) : "never"},
              ago(iso));
  }

  function badge(value, extraClass = "") {
    return el("span", {class: `badge ${value || "unknown"} ${extraClass}`.trim(), "data-status": value || ""},
              value || "unknown");
  }

  function tetrahedronHref(name) { return `/t/${encodeURIComponent(name)}`; }
  function nodeHref(tetrahedron, node) {
    return `/t/${encodeURIComponent(tetrahedron)}/n/${encodeURIComponent(node)}`;
  }
  function pathPart(index) {
    const parts = location.pathname.split("/");
    return parts[index] === undefined ? "" : decodeURIComponent(parts[index]);
  }

  // Query-string state (search, sort, bucket, window) so a view can be shared.
  function param(name, fallback) {
    return new URLSearchParams(location.search).get(name) || fallback;
  }
  function setParam(name, value, fallback) {
    const params = new URLSearchParams(location.search);
    if (!value || value === fallback) params.delete(name); else params.set(name, value);
    const query = params.toString();
    history.replaceState(null, "", location.pathname + (query ? `?${query}` : ""));
  }

  function clear(node) { while (node.firstChild) node.firstChild.remove(); return node; }

  return {el, svg, api, ApiError, live, serverNow, FORMATS, ago, agoCell, duration, time, number, badge, tickAges,
          tetrahedronHref, nodeHref, pathPart, param, setParam, clear, setDatabaseStatus};
})();
