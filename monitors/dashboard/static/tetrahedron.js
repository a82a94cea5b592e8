// A tetrahedron's page: summary, mesh map (plain SVG), node list, health
// heatmap, alerts, guardian decisions and the badge to embed. Everything is
// re-read from /api/tetrahedrons/NAME (and its heatmap) on each change event.
"use strict";

(() => {
  const {el, svg, api, ApiError, live, agoCell, number, badge, time, duration,
         nodeHref, pathPart, param, setParam, clear} = FM;

  const name = pathPart(2);
  const base = `/api/tetrahedrons/${encodeURIComponent(name)}`;
  let tetrahedronId = null;

  document.title = `FlowMesh \u00b7 ${name}`;
  document.getElementById("title").textContent = name;
  document.getElementById("crumb-tetrahedron").textContent = name;

  const STATUS_COLOURS = {online: "#2e9d4f", degraded: "#e08a00", offline: "#d64541"};
  const UNKNOWN_COLOUR = "#9aa4b1";
  const TRANSPORT_COLOURS = {udp: "#2563c9", lan: "#2563c9", mdns: "#2563c9", ws: "#7c4dcc",
                             websocket: "#7c4dcc", relay: "#6b7380", ble: "#0e9aa7", memory: "#b06a1f"};
  const OTHER_TRANSPORT = "#6b7380";

  // --- values ------------------------------------------------------------------
  function formatValue(value) {
    if (typeof value === "number") return Number.isInteger(value) ? String(value) : String(+value.toPrecision(3));
    if (value === null) return "null";
    if (typeof value === "object") return JSON.stringify(value);
    return String(value);
  }
  function details(object) {
    if (!object || typeof object !== "object") return "";
    return Object.entries(object).map(([k, v]) => `${k}: ${formatValue(v)}`).join("; ");
  }

  // --- summary ---------------------------------------------------------------------
  function renderSummary(t) {
    const badgeSlot = clear(document.getElementById("status-badge"));
    badgeSlot.append(badge(t.status));
    const facts = [
      ["Nodes", t.nodes, "nodes"],
      ["Online", t.online, "online"], ["Degraded", t.degraded, "degraded"], ["Offline", t.offline, "offline"],
      ["Average health", number(t.average_health), "average_health"],
      ["Highest risk", number(t.highest_risk), "highest_risk"],
      ["Last heartbeat", agoCell(t.last_heartbeat_at), "last_heartbeat_at"],
      ["Last prediction", t.last_prediction ? agoCell(t.last_prediction) : "none", "last_prediction"],
      ["Open alerts", t.open_alerts ?? 0, "open_alerts"],
    ];
    clear(document.getElementById("summary")).append(
      ...facts.map(([label, value, field]) => el("div", {}, el("dt", {}, label),
                                                  el("dd", {"data-field": field}, value))));
  }

  // --- the mesh map --------------------------------------------------------------
  const W = 640, H = 420, NODE_R = 17;

  function layout(ids) {
    const positions = new Map();
    const cx = W / 2, cy = H / 2 - 6;
    const radius = Math.min(W, H) / 2 - 50;
    ids.forEach((id, i) => {
      if (ids.length === 1) { positions.set(id, {x: cx, y: cy}); return; }
      const angle = -Math.PI / 2 + (2 * Math.PI * i) / ids.length;
      positions.set(id, {x: cx + radius * Math.cos(angle), y: cy + radius * Math.sin(angle)});
    });
    return positions;
  }

  // A node's name sits outside the ring, away from the edges inside it.
  function nodeLabel(id, p) {
    const cx = W / 2, cy = H / 2 - 6;
    if (Math.hypot(p.x - cx, p.y - cy) < 1) return svg("text", {y: NODE_R + 15, "text-anchor": "middle", text: id});
    const [ux, uy] = unit(p.x - cx, p.y - cy);
    const anchor = ux > 0.35 ? "start" : ux < -0.35 ? "end" : "middle";
    const gap = NODE_R + 6;
    return svg("text", {x: ux * gap, y: uy * gap + (uy > 0.35 ? 10 : uy < -0.35 ? -2 : 4),
                        "text-anchor": anchor, text: id});
  }

  function unit(dx, dy) { const len = Math.hypot(dx, dy) || 1; return [dx / len, dy / len]; }

  function renderMap(nodes, links) {
    const map = clear(document.getElementById("mesh-map"));
    map.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const byId = new Map(nodes.map((n) => [n.node_id, n]));
    const ids = [...byId.keys()];
    for (const link of links) for (const id of [link.observer, link.subject]) if (!byId.has(id)) { byId.set(id, null); ids.push(id); }
    ids.sort();
    const at = layout(ids);

    const transports = [...new Set(links.map((l) => l.transport || "unknown"))].sort();
    const colourOf = (t) => TRANSPORT_COLOURS[t] || OTHER_TRANSPORT;
    const defs = svg("defs", {}, transports.map((t) => svg("marker", {
      id: `arrow-${t.replace(/[^a-z0-9_-]/gi, "_")}`, viewBox: "0 0 10 10", refX: 9, refY: 5,
      markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse"},
      svg("path", {d: "M0,0 L10,5 L0,10 z", fill: colourOf(t)}))));
    map.append(defs);

    const edges = svg("g", {class: "edges"});
    for (const link of links) {
      const a = at.get(link.observer), b = at.get(link.subject);
      if (!a || !b || link.observer === link.subject) continue;
      // bend each edge to its own side, so A->B and B->A are two visible arcs
      const [ux, uy] = unit(b.x - a.x, b.y - a.y);
      const len = Math.hypot(b.x - a.x, b.y - a.y);
      const c = {x: (a.x + b.x) / 2 - uy * len * 0.12, y: (a.y + b.y) / 2 + ux * len * 0.12};
      const [sx, sy] = unit(c.x - a.x, c.y - a.y);
      const [ex, ey] = unit(c.x - b.x, c.y - b.y);
      const s = {x: a.x + sx * NODE_R, y: a.y + sy * NODE_R};
      const e = {x: b.x + ex * (NODE_R + 2), y: b.y + ey * (NODE_R + 2)};
      const transport = link.transport || "unknown";
      const mid = {x: 0.25 * s.x + 0.5 * c.x + 0.25 * e.x, y: 0.25 * s.y + 0.5 * c.y + 0.25 * e.y};
      const rtt = link.rtt_ms === null || link.rtt_ms === undefined ? "" : ` ${Math.round(link.rtt_ms)} ms`;
      edges.append(svg("g", {class: "link"},
        svg("path", {class: "edge", d: `M${s.x},${s.y} Q${c.x},${c.y} ${e.x},${e.y}`, stroke: colourOf(transport),
                     "marker-end": `url(#arrow-${transport.replace(/[^a-z0-9_-]/gi, "_")})`,
                     "data-observer": link.observer, "data-subject": link.subject, "data-transport": transport},
            svg("title", {text: `${link.observer} hears ${link.subject} over ${transport}${rtt}` +
                               (link.address ? ` (${link.address})` : "")})),
        svg("text", {class: "edge-label", x: mid.x, y: mid.y + 3, text: `${transport}${rtt}`})));
    }
    map.append(edges);
    // a white box behind each edge label (measured once it is laid out)
    for (const label of edges.querySelectorAll(".edge-label")) {
      const box = label.getBBox();
      label.before(svg("rect", {class: "edge-label-bg", x: box.x - 2, y: box.y, width: box.width + 4,
                                height: box.height, rx: 2}));
    }

    const group = svg("g", {class: "nodes"});
    for (const id of ids) {
      const node = byId.get(id);
      const status = node ? node.status : "unknown";
      const p = at.get(id);
      const health = node && node.health_score !== null ? `, health ${number(node.health_score)}` : "";
      const g = svg("g", {class: "node", "data-node": id, "data-status": status,
                          transform: `translate(${p.x},${p.y})`},
        svg("title", {text: `${id}: ${status}${health}${node && node.role ? ` (${node.role})` : ""}`}),
        svg("circle", {r: NODE_R, fill: STATUS_COLOURS[status] || UNKNOWN_COLOUR}),
        nodeLabel(id, p));
      group.append(node ? svg("a", {href: nodeHref(name, id)}, g) : g);
    }
    map.append(group);

    document.getElementById("map-caption").textContent =
      `${ids.length} nodes \u00b7 ${links.length} links` + (links.length ? "" : " (no mesh reports yet)");
    const legend = clear(document.getElementById("map-legend"));
    for (const [status, colour] of Object.entries(STATUS_COLOURS)) {
      legend.append(el("span", {}, el("i", {style: `background:${colour}`}), status));
    }
    for (const t of transports) legend.append(el("span", {}, el("i", {class: "bar", style: `background:${colourOf(t)}`}), t));
  }

  // --- nodes table -------------------------------------------------------------------
  function renderNodes(nodes) {
    const tbody = clear(document.querySelector("#nodes tbody"));
    for (const n of [...nodes].sort((a, b) => (a.node_id < b.node_id ? -1 : 1))) {
      const mesh = [n.mesh_status, n.mesh_transport && `via ${n.mesh_transport}`,
                    n.mesh_transport_rtt_ms !== null && n.mesh_transport_rtt_ms !== undefined
                      ? `${Math.round(n.mesh_transport_rtt_ms)} ms` : null].filter(Boolean).join(" ");
      tbody.append(el("tr", {"data-node": n.node_id},
        el("td", {"data-field": "node_id"}, el("a", {href: nodeHref(name, n.node_id)}, n.node_id),
           n.role ? el("span", {class: "muted"}, ` ${n.role}`) : null),
        el("td", {"data-field": "status", title: n.status_since ? `since ${n.status_since}` : null}, badge(n.status),
           n.status_since ? el("span", {class: "muted"}, ` ${duration(n.status_since)}`) : null),
        el("td", {"data-field": "health_score", class: "num"}, number(n.health_score)),
        el("td", {"data-field": "predicted_risk", class: "num"}, number(n.predicted_risk)),
        el("td", {"data-field": "mesh"}, mesh || "\u2013"),
        el("td", {"data-field": "last_heartbeat_at"}, agoCell(n.last_heartbeat_at))));
    }
    if (!nodes.length) tbody.append(el("tr", {}, el("td", {colspan: 6, class: "muted"}, "No nodes yet.")));
  }

  // --- heatmap ---------------------------------------------------------------------------
  const bucketSelect = document.getElementById("heatmap-bucket");
  bucketSelect.value = param("bucket", "5m");
  if (!bucketSelect.value) bucketSelect.value = "5m";
  const HEATMAP_BUCKETS = 48;

  function heatColour(score) {
    if (score === null || score === undefined) return null;
    const s = Math.max(0, Math.min(1, score));
    const hue = s < 0.5 ? s * 90 : 45 + (s - 0.5) * 150;
    return `hsl(${hue.toFixed(0)}, 68%, ${s < 0.5 ? 52 : 46}%)`;
  }

  function bucketLabel(iso, seconds) {
    const d = new Date(iso);
    if (seconds >= 86400) return FM.FORMATS.day.format(d);
    return seconds >= 3600 ? FM.FORMATS.dayMinute.format(d) : FM.FORMATS.minute.format(d);
  }

  function renderHeatmap(heat, nodeIds) {
    const table = document.getElementById("heatmap");
    // the columns are the SQL's (heatmap_buckets: aligned on the epoch, the newest
    // holding now, empty ones included), drawn as they come
    const nodes = {...(heat.nodes || {})};
    const columns = (heat.buckets || []).length;
    for (const id of nodeIds) if (!nodes[id]) nodes[id] = new Array(columns).fill(null);
    heat = {bucket_seconds: Number(heat.bucket_seconds), buckets: heat.buckets || [], nodes};
    const buckets = heat.buckets;
    const step = 8;
    const head = el("tr", {}, el("th", {}));
    for (let i = 0; i < buckets.length; i += step) {
      head.append(el("th", {colspan: Math.min(step, buckets.length - i)}, bucketLabel(buckets[i], heat.bucket_seconds)));
    }
    clear(table.tHead).append(head);
    const tbody = clear(table.tBodies[0]);
    const ids = Object.keys(heat.nodes || {}).sort();
    for (const id of ids) {
      const row = el("tr", {"data-node": id}, el("th", {scope: "row"}, el("a", {href: nodeHref(name, id)}, id)));
      heat.nodes[id].forEach((score, i) => {
        const colour = heatColour(score);
        row.append(el("td", {"data-bucket": buckets[i], "data-score": score === null ? "" : score,
                             style: colour ? `background:${colour}` : null,
                             title: `${id} \u00b7 ${time(buckets[i])} \u00b7 ` +
                                    (score === null ? "no heartbeat" : `health ${number(score)}`)}));
      });
      tbody.append(row);
    }
    if (!ids.length) tbody.append(el("tr", {}, el("td", {class: "muted", style: "background:none;width:auto"}, "No nodes yet.")));
    table.dataset.bucketSeconds = heat.bucket_seconds;
  }

  bucketSelect.addEventListener("change", () => {
    setParam("bucket", bucketSelect.value, "5m");
    refreshNow(0);
  });

  // --- alerts and decisions ------------------------------------------------------------
  function renderAlerts(alerts) {
    const tbody = clear(document.querySelector("#alerts tbody"));
    for (const a of alerts) {
      const open = !a.resolved_at;
      tbody.append(el("tr", {"data-alert": a.id, "data-type": a.alert_type, "data-open": open ? "true" : "false"},
        el("td", {title: a.created_at}, time(a.created_at)),
        el("td", {}, badge(a.severity)),
        el("td", {}, a.alert_type),
        el("td", {}, a.node_id ? el("a", {href: nodeHref(name, a.node_id)}, a.node_id) : "\u2013"),
        el("td", {class: "wrap", "data-field": "message"}, a.message),
        el("td", {class: "wrap muted", "data-field": "details"}, details(a.details)),
        el("td", {}, open ? el("span", {}, badge("open"), ` for ${duration(a.created_at)}`)
                          : el("span", {title: a.resolved_at}, badge("resolved"), ` after ${duration(a.created_at, a.resolved_at)}`))));
    }
    if (!alerts.length) tbody.append(el("tr", {}, el("td", {colspan: 7, class: "muted"}, "No alerts in the last 7 days.")));
  }

  function renderDecisions(decisions) {
    const tbody = clear(document.querySelector("#decisions tbody"));
    for (const d of decisions) {
      tbody.append(el("tr", {"data-decision": d.id},
        el("td", {title: d.created_at}, time(d.created_at)),
        el("td", {}, d.action),
        el("td", {}, el("a", {href: nodeHref(name, d.subject)}, d.subject)),
        el("td", {}, d.proposed_by),
        el("td", {class: "num"}, number(d.quorum)),
        el("td", {}, badge(d.status)),
        el("td", {}, d.decided_at ? `decided ${time(d.decided_at)}` : `closes ${time(d.closes_at)}`),
        el("td", {class: "wrap muted"}, details(d.details))));
    }
    if (!decisions.length) tbody.append(el("tr", {}, el("td", {colspan: 8, class: "muted"}, "No guardian decisions.")));
  }

  // --- badge ----------------------------------------------------------------------------
  (() => {
    const path = `/badge/${encodeURIComponent(name)}`;
    const svgUrl = `${location.origin}${path}.svg`;
    document.getElementById("badge-embed").append(
      el("img", {src: `${path}.svg`, alt: `${name} status badge`, id: "badge-image"}),
      el("code", {id: "badge-markdown"}, `![${name}](${svgUrl})`),
      el("span", {class: "muted"}, "shields.io endpoint: "),
      el("code", {id: "badge-json"}, `${location.origin}${path}.json`));
  })();

  // --- refresh --------------------------------------------------------------------------
  const pageError = document.getElementById("page-error");
  const content = document.getElementById("content");

  async function refresh() {
    const bucket = bucketSelect.value || "5m";
    let page, heat;
    try {
      [page, heat] = await Promise.all([
        api(base),
        api(`${base}/heatmap?bucket=${encodeURIComponent(bucket)}&buckets=${HEATMAP_BUCKETS}`)]);
    } catch (error) {
      if (error instanceof ApiError && (error.status === 404 || error.status === 400 || error.status === 401)) {
        pageError.textContent = error.status === 404 ? `No tetrahedron named \u201c${name}\u201d is visible to you.`
                                                     : error.message;
        pageError.hidden = false;
        content.hidden = error.status === 404 || error.status === 401;
      }
      throw error;
    }
    pageError.hidden = true;
    content.hidden = false;
    tetrahedronId = page.tetrahedron.tetrahedron_id;
    renderSummary(page.tetrahedron);
    renderMap(page.nodes || [], page.links || []);
    renderNodes(page.nodes || []);
    renderHeatmap(heat, (page.nodes || []).map((n) => n.node_id));
    renderAlerts(page.alerts || []);
    renderDecisions(page.decisions || []);
    document.body.dataset.loaded = "true";
  }

  const refreshNow = live(refresh, (about) => about.includes(name) || (tetrahedronId && about.includes(tetrahedronId)));
})();
