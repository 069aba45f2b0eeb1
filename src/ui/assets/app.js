// meshpath ui: draws the view the server sends (`view` events of /api/events). The server has done
// the aggregation; this file only lays it out. Text from the agents goes into the DOM as text only.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const BOX = { w: 168, h: 44, gapX: 190, gapY: 26, pad: 14, nsHead: 20, clusterHead: 42, clusterGap: 150 };
// A map wider than its panel is shrunk to fit, down to this scale; past it, the panel scrolls.
const MIN_SCALE = 0.55;

function el(tag, attrs, ...children) {
  const node = tag.startsWith("svg:")
    ? document.createElementNS(SVG, tag.slice(4))
    : document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

// ---- the map -------------------------------------------------------------------------------

// Workloads grouped: cluster → namespace → workloads; the reserved peers in a group of their own.
function groups(view) {
  const clusters = new Map();
  for (const cluster of view.mesh.clusters) clusters.set(cluster.name, new Map());
  const outside = [];
  for (const w of view.map.workloads) {
    if (w.kind !== "pod") { outside.push(w); continue; }
    if (!clusters.has(w.cluster)) clusters.set(w.cluster, new Map());
    const namespaces = clusters.get(w.cluster);
    if (!namespaces.has(w.namespace)) namespaces.set(w.namespace, []);
    namespaces.get(w.namespace).push(w);
  }
  const out = [...clusters.entries()]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([name, namespaces]) => ({
      name,
      outside: false,
      namespaces: [...namespaces.entries()].sort(([a], [b]) => a.localeCompare(b)),
    }));
  if (outside.length) out.push({ name: "outside the mesh's pods", outside: true, namespaces: [["", outside]] });
  return out;
}

// Workloads that only send (clients) go in the left column of their namespace, the others to the
// right of them; a column longer than `ROWS` wraps into another.
const ROWS = 10;

function columnsOf(workloads, receivers) {
  const senders = workloads.filter((w) => !receivers.has(w.id));
  const others = workloads.filter((w) => receivers.has(w.id));
  const columns = [];
  for (const layer of [senders, others]) {
    for (let i = 0; i < layer.length; i += ROWS) columns.push(layer.slice(i, i + ROWS));
  }
  return columns;
}

// Positions every workload box; returns the groups' boxes and the size of the whole.
function layout(view, room) {
  const receivers = new Set(view.map.edges.filter((e) => e.from !== e.to).map((e) => e.to));
  const placed = new Map();
  const boxes = [];
  let x = BOX.pad;
  let top = BOX.pad;
  let rowHeight = 0;
  let width = 0;
  for (const group of groups(view)) {
    const groupWidth = groupWidthOf(group, receivers);
    // Groups side by side while they fit the panel, then on a new row.
    if (x > BOX.pad && x + groupWidth > room) {
      x = BOX.pad;
      top += rowHeight + BOX.clusterGap / 2;
      rowHeight = 0;
    }
    let y = top + BOX.clusterHead;
    const namespaces = [];
    for (const [namespace, workloads] of group.namespaces) {
      const columns = columnsOf(workloads, receivers);
      const rows = Math.max(...columns.map((c) => c.length));
      const nsHeight = BOX.nsHead + rows * BOX.h + (rows - 1) * BOX.gapY + BOX.pad;
      columns.forEach((column, c) => column.forEach((w, r) => {
        placed.set(w.id, {
          x: x + 2 * BOX.pad + c * (BOX.w + BOX.gapX),
          y: y + BOX.nsHead + r * (BOX.h + BOX.gapY),
          w: BOX.w,
          h: BOX.h,
          workload: w,
        });
      }));
      namespaces.push({ namespace, x: x + BOX.pad, y, w: groupWidth - 2 * BOX.pad, h: nsHeight });
      y += nsHeight + BOX.gapY;
    }
    const groupHeight = Math.max(y - top, BOX.clusterHead + 60);
    boxes.push({ group, x, y: top, w: groupWidth, h: groupHeight, namespaces });
    rowHeight = Math.max(rowHeight, groupHeight);
    width = Math.max(width, x + groupWidth + BOX.pad);
    x += groupWidth + BOX.clusterGap;
  }
  return { placed, boxes, width, height: top + rowHeight + BOX.pad };
}

function groupWidthOf(group, receivers) {
  let width = 280;
  for (const [, workloads] of group.namespaces) {
    workloads.sort((a, b) => a.name.localeCompare(b.name));
    const columns = columnsOf(workloads, receivers).length;
    width = Math.max(width, columns * BOX.w + (columns - 1) * BOX.gapX + 4 * BOX.pad);
  }
  return width;
}

// Where the line from the centre of `box` towards (tx, ty) leaves it.
function exitPoint(box, tx, ty) {
  const cx = box.x + box.w / 2;
  const cy = box.y + box.h / 2;
  const dx = tx - cx;
  const dy = ty - cy;
  if (dx === 0 && dy === 0) return [cx, cy];
  const scale = Math.min(Math.abs(box.w / 2 / (dx || 1e-9)), Math.abs(box.h / 2 / (dy || 1e-9)));
  return [cx + dx * Math.min(scale, 1), cy + dy * Math.min(scale, 1)];
}

// Denials carry their reason on the map; other drops (often the pods' own IPv6 chatter) keep theirs
// in the tooltip, so that they do not drown the rest.
function edgeLabel(edge, full) {
  const port = edge.port ? `${edge.port}/` : "";
  const parts = [`${port}${edge.protocol}`, `×${edge.flows}`];
  if (edge.reason_text && (full || edge.colour === "denied")) parts.push(edge.reason_text);
  return parts.join(" · ");
}

function drawEdge(edge, from, to, nth, serviceNames) {
  const title = `${edge.from} → ${edge.to}\n${edgeLabel(edge, true)} (${edge.verdict})` +
    (edge.services.length ? `\nvia ${edge.services.map((s) => serviceNames.get(s) || s).join(", ")}` : "");
  const attrs = {
    class: `edge ${edge.colour}`,
    "data-from": edge.from,
    "data-to": edge.to,
    "data-verdict": edge.verdict,
    "data-reason": edge.reason || "",
  };
  if (edge.from === edge.to) {
    const x = from.x + from.w - 20 - nth * 8;
    const y = from.y;
    const d = `M ${x} ${y} c 10 -${34 + nth * 10} 40 -${34 + nth * 10} 30 0`;
    return el("svg:g", attrs,
      el("svg:title", {}, title),
      el("svg:path", { d, stroke: edge.css, "marker-end": `url(#arrow-${edge.colour})` }),
      el("svg:text", { x: x + 38, y: y - 26 - nth * 10, fill: edge.css }, edgeLabel(edge)));
  }
  const [fx, fy] = [from.x + from.w / 2, from.y + from.h / 2];
  const [tx, ty] = [to.x + to.w / 2, to.y + to.h / 2];
  const [sx, sy] = exitPoint(from, tx, ty);
  const [ex, ey] = exitPoint(to, fx, fy);
  // Parallel edges of one pair bow apart.
  const bow = (nth % 2 === 0 ? 1 : -1) * Math.ceil(nth / 2) * 30;
  const len = Math.hypot(ex - sx, ey - sy) || 1;
  const cx = (sx + ex) / 2 - ((ey - sy) / len) * bow;
  const cy = (sy + ey) / 2 + ((ex - sx) / len) * bow;
  // The label's middle, kept far enough from the left edge for a long reason to show whole.
  const lx = Math.max((sx + 2 * cx + ex) / 4, 150);
  const ly = (sy + 2 * cy + ey) / 4;
  return el("svg:g", attrs,
    el("svg:title", {}, title),
    el("svg:path", { d: `M ${sx} ${sy} Q ${cx} ${cy} ${ex} ${ey}`, stroke: edge.css, "marker-end": `url(#arrow-${edge.colour})` }),
    el("svg:text", { x: lx, y: ly - 4, fill: edge.css, "text-anchor": "middle" }, edgeLabel(edge)));
}

function markers(edges) {
  const colours = new Map(edges.map((e) => [e.colour, e.css]));
  return el("svg:defs", {}, [...colours].map(([name, css]) =>
    el("svg:marker", { id: `arrow-${name}`, viewBox: "0 0 10 10", refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" },
      el("svg:path", { d: "M 0 0 L 10 5 L 0 10 z", fill: css }))));
}

function readinessText(cluster) {
  if (!cluster.readiness.length) return null;
  const ready = cluster.readiness.filter((r) => r.ready).length;
  return `remote: ready in ${ready}/${cluster.readiness.length} agents' view`;
}

function drawMap(view) {
  const target = document.getElementById("map");
  if (!view.mesh.clusters.length && !view.map.workloads.length) {
    target.replaceChildren(el("p", { class: "empty" }, "No cluster and no flow yet: waiting for the agents…"));
    return;
  }
  const room = target.clientWidth || 1200;
  const { placed, boxes, width, height } = layout(view, room);
  const clusterInfo = new Map(view.mesh.clusters.map((c) => [c.name, c]));
  const serviceNames = new Map();
  for (const s of view.mesh.services) for (const f of s.frontends) serviceNames.set(f.replace(/\/[A-Z]+$/, ""), s.name);
  const scale = width > room ? Math.max(MIN_SCALE, room / width) : 1;
  const svg = el("svg:svg", {
    width: Math.floor(width * scale), height: Math.floor(height * scale),
    viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "service map",
  });
  svg.append(markers(view.map.edges));
  for (const box of boxes) {
    const info = clusterInfo.get(box.group.name);
    const sub = info ? [`id ${info.id ?? "?"}`, `${info.nodes.length} nodes`, readinessText(info)].filter(Boolean).join(" · ") : "";
    svg.append(el("svg:g", { class: "cluster", "data-cluster": box.group.outside ? "" : box.group.name },
      el("svg:rect", { class: `cluster-box${box.group.outside ? " outside" : ""}`, x: box.x, y: box.y, width: box.w, height: box.h, rx: 10 }),
      el("svg:text", { class: "cluster-title", x: box.x + 12, y: box.y + 20 }, box.group.name),
      el("svg:text", { class: "cluster-sub", x: box.x + 12, y: box.y + 35 }, sub),
      box.namespaces.filter((ns) => ns.namespace).map((ns) => [
        el("svg:rect", { class: "ns-box", x: ns.x, y: ns.y, width: ns.w, height: ns.h, rx: 6 }),
        el("svg:text", { class: "ns-title", x: ns.x + 8, y: ns.y + 14 }, `namespace ${ns.namespace}`),
      ])));
  }
  const pairs = new Map();
  for (const edge of view.map.edges) {
    const from = placed.get(edge.from);
    const to = placed.get(edge.to);
    if (!from || !to) continue;
    const pair = [edge.from, edge.to].sort().join("\u0000");
    const nth = pairs.get(pair) || 0;
    pairs.set(pair, nth + 1);
    svg.append(drawEdge(edge, from, to, nth, serviceNames));
  }
  for (const { x, y, w, h, workload } of placed.values()) {
    const sub = workload.kind === "pod" ? `ID:${workload.identity}` : workload.kind.replace("_", "-");
    svg.append(el("svg:g", { class: `workload${workload.kind === "pod" ? "" : " reserved"}`, "data-workload": workload.id },
      el("svg:title", {}, workload.id),
      el("svg:rect", { x, y, width: w, height: h, rx: 6 }),
      el("svg:text", { class: "name", x: x + 10, y: y + 19 }, workload.name),
      el("svg:text", { class: "sub", x: x + 10, y: y + 34 }, sub)));
  }
  target.replaceChildren(svg);
}

// ---- the side panels and the table ---------------------------------------------------------

function badge(ok, text, warn) {
  return el("span", { class: `badge ${ok ? "ok" : warn ? "warn" : "bad"}` }, text);
}

function drawClusters(view) {
  document.getElementById("clusters").replaceChildren(...view.mesh.clusters.map((c) =>
    el("div", { class: "cluster-card", "data-cluster": c.name },
      el("h3", {}, c.name, " ", el("span", { class: "muted" }, `id ${c.id ?? "?"}`)),
      el("ul", {}, c.nodes.map((n) => el("li", { "data-node": `${c.name}/${n.name}` }, n.name, " ", el("span", { class: "muted" }, n.address || "")))),
      c.readiness.map((r) => el("div", { class: "muted", "data-readiness": r.ready ? "ready" : "not-ready" },
        badge(r.ready, r.ready ? "ready" : r.connected ? "not ready" : "disconnected"),
        `as seen by ${r.seen_by}`, r.error ? `: ${r.error}` : "")))));
  document.getElementById("agents").replaceChildren(...view.mesh.agents
    .filter((a) => a.error || a.flows_error)
    .map((a) => el("p", { class: "agent-error" }, `${a.node || a.socket}: ${a.error || a.flows_error}`)));
}

function drawServices(view) {
  const target = document.getElementById("services");
  if (!view.mesh.services.length) {
    target.replaceChildren(el("p", { class: "muted" }, "No service."));
    return;
  }
  target.replaceChildren(...view.mesh.services.map((s) =>
    el("div", { class: "service-card", "data-service": s.name },
      el("h3", {}, s.name),
      el("div", { class: "muted" }, s.frontends.join(", ")),
      Object.keys(s.clusters).length
        ? Object.entries(s.clusters).map(([cluster, backends]) =>
          el("div", { "data-backend-cluster": cluster },
            el("div", { class: "cluster-name" }, cluster),
            el("ul", {}, backends.map((b) => el("li", { class: "backend", "data-state": b.state },
              b.address, " ", badge(b.state === "active", b.state, b.state === "terminating"))))))
        : el("div", { class: "muted" }, "no backend"))));
}

function drawFlows(view) {
  const body = document.querySelector("#flows tbody");
  body.replaceChildren(...view.flows.map((f) =>
    el("tr", { class: f.colour, "data-verdict": f.verdict },
      el("td", {}, f.time.replace("T", " ").replace("Z", "")),
      el("td", {}, f.node),
      el("td", {}, f.source),
      el("td", {}, f.destination),
      el("td", {}, f.kind),
      el("td", { class: "verdict" }, f.verdict),
      el("td", {}, f.summary))));
  document.getElementById("flows-note").textContent =
    `the latest ${view.flows.length} of ${view.matched}${view.filter ? ` matching ${view.filter}` : ""}`;
  const extra = [];
  if (view.lost) extra.push(`${view.lost} events lost by the agents`);
  if (view.missed) extra.push(`${view.missed} missed by this page`);
  if (view.map.evicted_edges) extra.push(`${view.map.evicted_edges} old edges left out`);
  document.getElementById("counts").textContent =
    [`${view.map.workloads.length} workloads`, `${view.map.edges.length} edges`, `${view.map.flows} flows`, ...extra].join(" · ");
}

let lastView = null;

function draw(view) {
  lastView = view;
  drawMap(view);
  drawClusters(view);
  drawServices(view);
  drawFlows(view);
}

// ---- the live stream and the filter --------------------------------------------------------

let source = null;

function connect(filter) {
  if (source) source.close();
  const connection = document.getElementById("connection");
  connection.textContent = "connecting…";
  connection.className = "connection";
  source = new EventSource(`/api/events?filter=${encodeURIComponent(filter)}`);
  source.addEventListener("view", (event) => {
    connection.textContent = `live · ${new Date().toLocaleTimeString()}`;
    connection.className = "connection live";
    draw(JSON.parse(event.data));
  });
  source.onerror = () => {
    connection.textContent = "connection lost: retrying…";
    connection.className = "connection lost";
  };
}

async function applyFilter(filter) {
  const error = document.getElementById("filter-error");
  const answer = await fetch(`/api/filter?filter=${encodeURIComponent(filter)}`);
  if (!answer.ok) {
    error.textContent = await answer.text();
    error.hidden = false;
    return;
  }
  error.hidden = true;
  const url = new URL(window.location.href);
  if (filter.trim()) url.searchParams.set("filter", filter); else url.searchParams.delete("filter");
  window.history.replaceState(null, "", url);
  connect(filter);
}

// The map is laid out for the panel's width: again when the window changes size.
let resizing = null;
window.addEventListener("resize", () => {
  clearTimeout(resizing);
  resizing = setTimeout(() => { if (lastView) drawMap(lastView); }, 150);
});

document.addEventListener("DOMContentLoaded", () => {
  const input = document.getElementById("filter");
  input.value = new URL(window.location.href).searchParams.get("filter") || "";
  document.getElementById("filter-form").addEventListener("submit", (event) => {
    event.preventDefault();
    applyFilter(input.value);
  });
  applyFilter(input.value);
});
