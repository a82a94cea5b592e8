// The fleet overview: every tetrahedron from /api/fleet (mesh_summary rows).
// Rows are built once and updated in place on each refresh; sorting reorders
// them and the search box hides them, so 1,000 rows stay fast.
"use strict";

(() => {
  const {el, api, live, agoCell, number, badge, tetrahedronHref, param, setParam} = FM;

  const STATUS_RANK = {up: 0, late: 1, down: 2};
  // key: the mesh_summary column; kind: how it sorts and shows
  const COLUMNS = [
    {key: "name", label: "Tetrahedron", kind: "name"},
    {key: "status", label: "Status", kind: "status"},
    {key: "online", label: "Online", kind: "count"},
    {key: "degraded", label: "Degraded", kind: "count"},
    {key: "offline", label: "Offline", kind: "count"},
    {key: "nodes", label: "Nodes", kind: "count"},
    {key: "average_health", label: "Avg health", kind: "score"},
    {key: "highest_risk", label: "Highest risk", kind: "score"},
    {key: "last_heartbeat_at", label: "Last heartbeat", kind: "time"},
    {key: "open_alerts", label: "Open alerts", kind: "count"},
  ];
  const BY_KEY = Object.fromEntries(COLUMNS.map((c) => [c.key, c]));

  const table = document.getElementById("fleet");
  const tbody = table.tBodies[0];
  const search = document.getElementById("search");
  const empty = document.getElementById("fleet-empty");
  const summary = document.getElementById("fleet-summary");

  /** name -> {row: tr, cells: {key: td}, data: summary row} */
  const rows = new Map();
  let sortKey = param("sort", "name");
  if (!BY_KEY[sortKey]) sortKey = "name";
  let sortDir = param("dir", "asc") === "desc" ? "desc" : "asc";
  let loaded = false;

  // --- header ---------------------------------------------------------------
  const headRow = table.tHead.rows[0];
  for (const column of COLUMNS) {
    const numeric = column.kind === "count" || column.kind === "score";
    headRow.append(el("th", {"data-sort": column.key, class: numeric ? "num" : null, scope: "col",
                             title: `Sort by ${column.label.toLowerCase()}`, tabindex: 0,
                             onclick: () => sortBy(column.key),
                             onkeydown: (event) => {
                               if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortBy(column.key); }
                             }}, column.label));
  }

  function sortBy(key) {
    sortDir = key === sortKey && sortDir === "asc" ? "desc" : "asc";
    sortKey = key;
    setParam("sort", sortKey, "name");
    setParam("dir", sortDir, "asc");
    arrange();
  }

  // --- cells ------------------------------------------------------------------
  function sortValue(data, column) {
    const value = data[column.key];
    if (value === null || value === undefined) return null;
    switch (column.kind) {
      case "name": return String(value).toLowerCase();
      case "status": return STATUS_RANK[value] ?? 3;
      case "time": return Date.parse(value);
      default: return Number(value);
    }
  }

  function fillCell(td, column, data) {
    const value = data[column.key];
    const key = `${value}`;
    if (td.dataset.value === key) return;  // unchanged: leave the DOM alone
    td.dataset.value = key;
    td.textContent = "";
    switch (column.kind) {
      case "name":
        td.append(el("a", {href: tetrahedronHref(value)}, value));
        break;
      case "status":
        td.append(badge(value));
        break;
      case "time":
        td.append(agoCell(value));
        break;
      case "score":
        td.textContent = number(value);
        break;
      default:
        td.textContent = value ?? 0;
        td.classList.toggle("zero", !value);
    }
  }

  function createRow(data) {
    const row = el("tr", {"data-tetrahedron": data.name});
    const cells = {};
    for (const column of COLUMNS) {
      const numeric = column.kind === "count" || column.kind === "score";
      cells[column.key] = el("td", {"data-field": column.key, class: numeric ? "num" : null});
      row.append(cells[column.key]);
    }
    return {row, cells, data};
  }

  // --- arrangement: order and filter ------------------------------------------
  function compare(a, b) {
    const column = BY_KEY[sortKey];
    const x = sortValue(a.data, column), y = sortValue(b.data, column);
    let order = 0;
    if (x === null && y === null) order = 0;
    else if (x === null) return 1;  // no value: last either way
    else if (y === null) return -1;
    else order = x < y ? -1 : x > y ? 1 : 0;
    if (order === 0) return a.data.name < b.data.name ? -1 : a.data.name > b.data.name ? 1 : 0;
    return sortDir === "asc" ? order : -order;
  }

  function arrange() {
    for (const th of headRow.cells) {
      if (th.dataset.sort === sortKey) th.setAttribute("aria-sort", sortDir === "asc" ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
    const ordered = [...rows.values()].sort(compare);
    // move rows only when the order changed
    const current = tbody.rows;
    const same = current.length === ordered.length && ordered.every((entry, i) => current[i] === entry.row);
    if (!same) {
      const fragment = document.createDocumentFragment();
      for (const entry of ordered) fragment.append(entry.row);
      tbody.append(fragment);
    }
    filter();
  }

  function filter() {
    const needle = search.value.trim().toLowerCase();
    let shown = 0;
    for (const [name, entry] of rows) {
      const hidden = needle !== "" && !name.toLowerCase().includes(needle);
      if (entry.row.hidden !== hidden) entry.row.hidden = hidden;
      if (!hidden) shown++;
    }
    table.dataset.shown = shown;
    if (!loaded) return;
    empty.hidden = shown > 0;
    empty.textContent = rows.size === 0 ? "No tetrahedrons to show: none is visible to you yet."
                                        : `No tetrahedron matches \u201c${search.value.trim()}\u201d.`;
  }

  search.value = param("search", "");
  search.addEventListener("input", () => {
    setParam("search", search.value.trim(), "");
    filter();
  });

  // --- data ---------------------------------------------------------------------
  function update(tetrahedrons) {
    const started = performance.now();
    const seen = new Set();
    for (const data of tetrahedrons) {
      seen.add(data.name);
      let entry = rows.get(data.name);
      if (!entry) {
        entry = createRow(data);
        rows.set(data.name, entry);
      }
      entry.data = data;
      for (const column of COLUMNS) fillCell(entry.cells[column.key], column, data);
    }
    for (const [name, entry] of rows) {
      if (!seen.has(name)) {
        entry.row.remove();
        rows.delete(name);
      }
    }
    loaded = true;
    table.dataset.loaded = "true";
    arrange();
    table.dataset.renderMs = (performance.now() - started).toFixed(1);  // for the curious and the tests

    const totals = {online: 0, degraded: 0, offline: 0, open_alerts: 0};
    for (const data of tetrahedrons) for (const key in totals) totals[key] += Number(data[key] || 0);
    summary.textContent = `${tetrahedrons.length} tetrahedrons \u00b7 ${totals.online} online \u00b7 ` +
      `${totals.degraded} degraded \u00b7 ${totals.offline} offline \u00b7 ${totals.open_alerts} open alerts`;
  }

  async function refresh() {
    const body = await api("/api/fleet");
    update(body.tetrahedrons || []);
  }

  // every change anywhere concerns the overview: at most one refetch of the
  // whole fleet every 1.5 s, so a busy fleet costs each open page little and a
  // change still shows within 2 s
  live(refresh, () => true, 20000, 1500);
})();
