// A node's page: its facts, one uPlot chart per metric of node_metric_series
// over a selectable window, its status history and its mesh events, all from
// /api/tetrahedrons/NAME/nodes/NODE, re-read on each change event.
"use strict";

(() => {
  const {el, api, ApiError, live, agoCell, number, badge, time, duration,
         tetrahedronHref, pathPart, param, setParam, clear} = FM;

  const tetrahedron = pathPart(2);
  const nodeId = pathPart(4);
  const base = `/api/tetrahedrons/${encodeURIComponent(tetrahedron)}/nodes/${encodeURIComponent(nodeId)}`;
  let tetrahedronId = null;

  document.title = `FlowMesh \u00b7 ${nodeId} \u00b7 ${tetrahedron}`;
  document.getElementById("title").textContent = nodeId;
  const crumb = document.getElementById("crumb-tetrahedron");
  crumb.textContent = tetrahedron;
  crumb.href = tetrahedronHref(tetrahedron);
  document.getElementById("crumb-node").textContent = nodeId;

  // key: the node_metric_series column; scale: shown value per stored value
  const METRICS = [
    {key: "latency_ms", label: "Latency", unit: "ms", colour: "#2563c9"},
    {key: "packet_loss", label: "Packet loss", unit: "%", colour: "#7c4dcc", scale: 100, range: [0, null]},
    {key: "cpu_percent", label: "CPU", unit: "%", colour: "#0e9aa7", range: [0, 100]},
    {key: "battery_percent", label: "Battery", unit: "%", colour: "#2e9d4f", range: [0, 100]},
    {key: "temperature_c", label: "Temperature", unit: "\u00b0C", colour: "#e0662d"},
    {key: "health_score", label: "Health score", unit: "", colour: "#2e7d32", range: [0, 1]},
    // scored by the prediction pass, not every bucket: the line spans the gaps
    {key: "predicted_risk", label: "Predicted risk", unit: "", colour: "#d64541", range: [0, 1], spanGaps: true},
  ];
  const BUCKETS = 60;
  const WINDOW_SECONDS = {"15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800};
  // the charts' time axis: the whole window asked for, ending now (server time)
  let xRange = [null, null];

  const windowSelect = document.getElementById("window");
  windowSelect.value = param("window", "1h");
  if (!windowSelect.value) windowSelect.value = "1h";
  windowSelect.addEventListener("change", () => {
    setParam("window", windowSelect.value, "1h");
    refreshNow(0);
  });

  // --- facts -----------------------------------------------------------------------
  function renderFacts(n) {
    clear(document.getElementById("status-badge")).append(badge(n.status));
    const metrics = n.metrics && typeof n.metrics === "object" ? n.metrics : {};
    const rtt = n.mesh_transport_rtt_ms === null || n.mesh_transport_rtt_ms === undefined
      ? "" : ` (${Math.round(n.mesh_transport_rtt_ms)} ms)`;
    const facts = [
      ["Status since", n.status_since ? `${time(n.status_since)} (${duration(n.status_since)})` : "\u2013", "status_since"],
      ["Role", n.role || "\u2013", "role"],
      ["Health score", number(n.health_score), "health_score"],
      ["Predicted risk", number(n.predicted_risk), "predicted_risk"],
      ["Last heartbeat", agoCell(n.last_heartbeat_at), "last_heartbeat_at"],
      ["Last sequence", n.last_seq ?? "\u2013", "last_seq"],
      ["Mesh status", n.mesh_status ? `${n.mesh_status}${n.mesh_reported_by ? ` (by ${n.mesh_reported_by})` : ""}` : "\u2013", "mesh_status"],
      ["Transport", n.mesh_transport ? `${n.mesh_transport}${rtt}` : "\u2013", "mesh_transport"],
    ];
    for (const [key, value] of Object.entries(metrics)) {
      if (typeof value !== "object") facts.push([key, typeof value === "number" ? String(+value.toPrecision(4)) : String(value), `metrics.${key}`]);
    }
    clear(document.getElementById("facts")).append(
      ...facts.map(([label, value, field]) => el("div", {}, el("dt", {}, label), el("dd", {"data-field": field}, value))));
  }

  // --- charts ----------------------------------------------------------------------
  const charts = new Map();  // metric key -> {plot, box, latest}
  const container = document.getElementById("charts");

  function timeLabels(u, splits) {
    const span = (u.scales.x.max ?? 0) - (u.scales.x.min ?? 0);
    return splits.map((ts) => {
      const d = new Date(ts * 1000);
      return span > 86400 ? FM.FORMATS.dayMinute.format(d) : FM.FORMATS.minute.format(d);
    });
  }

  function chartWidth(box) { return Math.max(280, box.clientWidth); }

  function ensureChart(metric) {
    let chart = charts.get(metric.key);
    if (chart) return chart;
    const latest = el("span", {class: "muted"});
    const box = el("div", {class: "chart", "data-metric": metric.key},
                   el("h3", {}, `${metric.label}${metric.unit ? ` (${metric.unit})` : ""} `, latest));
    container.append(box);
    const plot = new uPlot({
      width: chartWidth(box), height: 170,
      legend: {show: false},
      cursor: {sync: {key: "node-metrics"}},
      scales: {x: {time: true, range: (u, min, max) => [xRange[0] ?? min, xRange[1] ?? max]}, y: metric.range ? {range: (u, min, max) => [
        metric.range[0] ?? min, metric.range[1] ?? Math.max(max, 1)]} : {}},
      axes: [{stroke: "#5f6b7a", grid: {stroke: "#eef0f3"}, space: 70, values: timeLabels},
             {stroke: "#5f6b7a", size: 50, grid: {stroke: "#eef0f3"}}],
      series: [{}, {label: metric.label, stroke: metric.colour, width: 2, fill: `${metric.colour}14`,
                    spanGaps: Boolean(metric.spanGaps),
                    // isolated buckets (sparse data) would draw nothing without their points
                    points: {size: 5, show: (u) => u.data[1].filter((v) => v !== null).length < 40}}],
    }, [[], []], box);
    chart = {plot, box, latest};
    charts.set(metric.key, chart);
    return chart;
  }

  window.addEventListener("resize", () => {
    for (const chart of charts.values()) chart.plot.setSize({width: chartWidth(chart.box), height: 170});
  });

  function renderCharts(series, generatedAt) {
    const end = (generatedAt ? Date.parse(generatedAt) : FM.serverNow()) / 1000;
    xRange = [end - (WINDOW_SECONDS[windowSelect.value] || 3600), end];
    const xs = series.map((row) => Date.parse(row.bucket_start) / 1000);
    for (const metric of METRICS) {
      const chart = ensureChart(metric);
      const ys = series.map((row) => {
        const v = row[metric.key];
        return v === null || v === undefined ? null : Number(v) * (metric.scale || 1);
      });
      chart.plot.setData([xs, ys]);
      const points = ys.filter((v) => v !== null);
      chart.box.dataset.points = points.length;
      chart.latest.textContent = points.length ? `latest ${+points[points.length - 1].toPrecision(3)}` : "no data in this window";
    }
  }

  // --- history and events ------------------------------------------------------------
  function renderHistory(history) {
    const tbody = clear(document.querySelector("#history tbody"));
    for (const h of history) {
      tbody.append(el("tr", {"data-status": h.status},
        el("td", {}, badge(h.status)),
        el("td", {title: h.since}, time(h.since)),
        el("td", {title: h.until || ""}, h.until ? time(h.until) : "now"),
        el("td", {}, duration(h.since, h.until)),
        el("td", {class: "num"}, number(h.health_score))));
    }
    if (!history.length) tbody.append(el("tr", {}, el("td", {colspan: 5, class: "muted"}, "No status changes yet.")));
  }

  function describeEvent(e) {
    const d = e.details || {};
    if (e.kind === "path") {
      return [d.transport && `over ${d.transport}`, d.address, d.rtt_ms !== undefined && d.rtt_ms !== null ? `${Math.round(d.rtt_ms)} ms` : null,
              d.previous ? `was ${d.previous}` : null].filter(Boolean).join(" \u00b7 ");
    }
    if (e.kind === "alert") {
      const alert = d.alert || {};
      return [d.priority, alert.type, ...Object.entries(alert).filter(([k]) => k !== "type").map(([k, v]) => `${k}: ${v}`)]
        .filter(Boolean).join(" \u00b7 ");
    }
    const rest = Object.entries(d).map(([k, v]) => `${k}: ${typeof v === "object" ? JSON.stringify(v) : v}`);
    if (e.incarnation !== null && e.incarnation !== undefined) rest.unshift(`incarnation ${e.incarnation}`);
    return rest.join(" \u00b7 ");
  }

  function renderEvents(events) {
    const tbody = clear(document.querySelector("#events tbody"));
    for (const e of events) {
      tbody.append(el("tr", {"data-kind": e.kind},
        el("td", {title: e.observed_at}, time(e.observed_at)),
        el("td", {}, e.observer),
        el("td", {}, e.kind),
        el("td", {}, e.subject),
        el("td", {class: "wrap muted"}, describeEvent(e))));
    }
    if (!events.length) tbody.append(el("tr", {}, el("td", {colspan: 5, class: "muted"}, "No mesh events about this node.")));
  }

  // --- refresh ------------------------------------------------------------------------
  const pageError = document.getElementById("page-error");
  const content = document.getElementById("content");

  async function refresh() {
    let body;
    try {
      body = await api(`${base}?window=${encodeURIComponent(windowSelect.value || "1h")}&buckets=${BUCKETS}`);
    } catch (error) {
      if (error instanceof ApiError && [400, 401, 404].includes(error.status)) {
        pageError.textContent = error.status === 404
          ? `No node \u201c${nodeId}\u201d in a tetrahedron \u201c${tetrahedron}\u201d visible to you.` : error.message;
        pageError.hidden = false;
        content.hidden = error.status !== 400;
      }
      throw error;
    }
    pageError.hidden = true;
    content.hidden = false;
    tetrahedronId = body.node.tetrahedron_id;
    renderFacts(body.node);
    renderCharts(body.series || [], body.generated_at);
    renderHistory(body.history || []);
    renderEvents(body.events || []);
    document.body.dataset.loaded = "true";
  }

  const refreshNow = live(refresh, (about) => about.includes(tetrahedron) || (tetrahedronId && about.includes(tetrahedronId)));
})();
