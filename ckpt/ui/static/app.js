// ckpt ui: draws each page from the JSON API under /api/.
// Every value read from the store reaches the page as text (textContent, text nodes, SVG <title> text),
// never as markup; links are built from encoded ids and names under fixed paths.
"use strict";
(function () {
  const SVGNS = "http://www.w3.org/2000/svg";
  const main = document.getElementById("main");
  const PALETTE = ["#3f51b5", "#e67e22", "#1e9e5a", "#c0392b", "#8e44ad", "#16a0a8", "#7f8c8d", "#d35400",
    "#2c3e50", "#27ae60"];

  // -- building elements ---------------------------------------------------------------------------
  function put(el, attrs, kids) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") el.textContent = String(v);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const kid of kids.flat(Infinity)) {
      if (kid === null || kid === undefined || kid === false) continue;
      el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return el;
  }
  const fill = (el, ...kids) => { el.replaceChildren(); return put(el, {}, kids); };
  const h = (tag, attrs, ...kids) => put(document.createElement(tag), attrs, kids);
  const s = (tag, attrs, ...kids) => put(document.createElementNS(SVGNS, tag), attrs, kids);
  const enc = encodeURIComponent;
  const snapHref = (id) => "/snap/" + enc(id);
  const runHref = (rev) => "/run/" + enc(rev);
  const diffHref = (a, b) => "/diff/" + enc(a) + ".." + enc(b);

  class ApiError extends Error {
    constructor(message, hint, status) { super(message); this.hint = hint; this.status = status; }
  }
  async function api(path) {
    const r = await fetch(path, { headers: { Accept: "application/json" } });
    let body = null;
    try { body = await r.json(); } catch (e) { body = null; }
    if (!r.ok) throw new ApiError((body && body.error) || r.status + " " + r.statusText, body && body.hint, r.status);
    return body;
  }
  function showError(where, err) {
    fill(where, h("div", { class: "error", role: "alert" },
      h("div", { class: "message", text: err.message || String(err) }),
      err.hint ? h("div", { class: "hint", text: "hint: " + err.hint }) : null));
  }
  function num(v) {
    if (v === null || v === undefined) return "";
    if (typeof v === "string") return v; // "NaN", "Infinity", "-Infinity"
    if (Number.isInteger(v)) return String(v);
    const a = Math.abs(v);
    return a !== 0 && (a < 1e-3 || a >= 1e6) ? v.toExponential(3) : String(Number(v.toPrecision(5)));
  }
  const plural = (n, one, many) => `${n} ${n === 1 ? one : many || one + "s"}`;
  const finite = (v) => typeof v === "number" && Number.isFinite(v);
  function bytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let i = 0, v = n;
    while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return i === 0 ? n + " B" : v.toFixed(1) + " " + units[i];
  }
  function badges(refs) {
    if (!refs) return [];
    return [
      ...refs.branches.map((b) => h("a", { class: "badge branch", href: runHref(b), title: "branch " + b, text: b })),
      ...refs.tags.map((t) => h("span", { class: "badge tag" + (t.frozen ? " frozen" : ""),
        title: t.frozen ? "frozen release " + t.name : "tag " + t.name, text: t.name + (t.frozen ? " (frozen)" : "") })),
    ];
  }
  function label(snap) {
    const bits = [snap.model || "(no model name)", snap.short_id || snap.id.slice(0, 12)];
    if (snap.step !== null && snap.step !== undefined) bits.push("step " + snap.step);
    return bits.join(" ");
  }
  function snapLink(snap) {
    return h("a", { href: snapHref(snap.id), class: "mono", "data-id": snap.id, text: label(snap) });
  }
  function tail(prefix) {
    try { return decodeURIComponent(location.pathname.slice(prefix.length)); } catch (e) { return null; }
  }

  // -- header ------------------------------------------------------------------------------------
  async function header(current) {
    const nav = document.getElementById("nav");
    const select = h("select", { id: "run-select", "aria-label": "run view of a branch",
      onchange: (e) => { if (e.target.value) location.href = runHref(e.target.value); } },
    h("option", { value: "", text: "Runs…" }));
    fill(nav, h("a", { href: "/", text: "Tree" }), select, h("a", { href: "/diff", text: "Diff" }));
    try {
      const info = await api("/api/store");
      document.getElementById("store").textContent = info.url + " · ckpt " + info.ckpt_version;
      for (const b of Object.keys(info.branches).sort()) {
        select.append(h("option", { value: b, text: b, selected: b === current }));
      }
      return info;
    } catch (e) {
      return null;
    }
  }

  // -- the family tree -----------------------------------------------------------------------------
  function nodeTitle(n) {
    const lines = [n.id, n.relation + (n.model ? " · " + n.model : "")];
    if (n.step !== null) lines.push("step " + n.step + (n.epoch !== null ? " · epoch " + n.epoch : ""));
    const m = Object.entries(n.metrics || {}).map(([k, v]) => k + "=" + num(v));
    if (m.length) lines.push(m.join("  "));
    if (n.message) lines.push(n.message);
    lines.push(n.created_at);
    if (n.pruned) lines.push("pruned: tensors released, record kept");
    for (const b of n.refs.branches) lines.push("branch " + b);
    for (const t of n.refs.tags) lines.push((t.frozen ? "frozen release " : "tag ") + t.name);
    return lines.join("\n");
  }

  function edgePath(a, b) {
    if (a.y === b.y) return `M${a.x},${a.y}L${b.x},${b.y}`;
    const mx = a.x + Math.max(18, (b.x - a.x) * 0.5);
    return `M${a.x},${a.y}C${mx},${a.y} ${mx},${b.y} ${b.x},${b.y}`;
  }

  async function treePage() {
    document.title = "ckpt · family tree";
    const g = await api("/api/graph");
    const byId = new Map(g.nodes.map((n) => [n.id, n]));
    const frozen = Object.values(g.tags).filter((t) => t.frozen).length;
    const pruned = g.nodes.filter((n) => n.pruned).length;
    const svg = s("svg", { class: "tree", id: "tree", role: "img", "aria-label": "family tree of every snapshot" });
    const view = s("g", { class: "viewport" });
    const edges = s("g", { class: "edges" });
    const labels = s("g", { class: "edge-labels" });
    const nodes = s("g", { class: "nodes" });
    const few = g.nodes.length <= 3000;
    for (const e of g.edges) {
      const a = byId.get(e.source), b = byId.get(e.target);
      edges.append(s("path", { class: `edge kind-${e.kind} rel-${e.relation}`, d: edgePath(a, b),
        "data-source": e.source, "data-target": e.target },
      s("title", { text: e.relation + ": " + e.source.slice(0, 12) + " → " + e.target.slice(0, 12) })));
      if (e.relation !== "continue") {
        labels.append(s("text", { class: "edge-label", x: a.x + (b.x - a.x) * 0.62, y: (a.y + b.y) / 2 - 5,
          "text-anchor": "middle", text: e.relation }));
      }
    }
    for (const n of g.nodes) {
      const cls = ["node", "rel-" + n.relation];
      if (n.pruned) cls.push("pruned");
      if (n.refs.tags.some((t) => t.frozen)) cls.push("frozen");
      const a = s("a", { class: cls.join(" "), href: snapHref(n.id), "data-id": n.id,
        transform: `translate(${n.x},${n.y})` }, s("title", { text: nodeTitle(n) }));
      if (n.refs.tags.some((t) => t.frozen)) a.append(s("circle", { class: "ring", r: 11 }));
      a.append(s("circle", { class: "dot", r: 7 }));
      let dy = -12;
      for (const b of n.refs.branches) { a.append(s("text", { class: "ref branch", x: 10, y: dy, text: b })); dy -= 13; }
      for (const t of n.refs.tags) {
        a.append(s("text", { class: "ref tag" + (t.frozen ? " frozen" : ""), x: 10, y: dy,
          text: t.name + (t.frozen ? " (frozen)" : "") }));
        dy -= 13;
      }
      if (n.line_start && n.model) a.append(s("text", { class: "model", x: -8, y: 22, text: n.model }));
      else if (few && n.step !== null) a.append(s("text", { class: "step", y: 20, "text-anchor": "middle", text: n.step }));
      nodes.append(a);
    }
    view.append(edges, labels, nodes);
    svg.append(view);

    const find = h("input", { type: "search", placeholder: "go to a branch, tag or id…", list: "ref-names",
      "aria-label": "find a snapshot" });
    const names = h("datalist", { id: "ref-names" },
      Object.keys(g.branches).map((b) => h("option", { value: b })),
      Object.keys(g.tags).map((t) => h("option", { value: t })));
    const legend = h("div", { class: "legend" },
      ["import", "continue", "finetune", "adapter", "merge", "quantized"].map((r) => h("span", { class: "key " + r, text: r })),
      h("span", { class: "key pruned", text: "pruned" }), h("span", { class: "key frozen", text: "frozen release" }), h("span", { class: "key tag", text: "tag" }));
    const btn = (text, title, fn) => h("button", { type: "button", title, text, onclick: fn });
    const wrap = h("div", { class: "tree-wrap" }, svg);
    wrap.style.height = Math.max(260, Math.min(window.innerHeight - 150, g.height + 120)) + "px";
    fill(main,
      h("div", { class: "toolbar" },
        h("span", { class: "counts", id: "counts", text: [plural(g.nodes.length, "snapshot"), plural(Object.keys(g.branches).length, "branch", "branches"),
          plural(Object.keys(g.tags).length, "tag") + ` (${frozen} frozen)`, `${pruned} pruned`].join(" · ") }),
        btn("Fit", "show everything", () => fit(true)), btn("+", "zoom in", () => zoomBy(1.4)),
        btn("−", "zoom out", () => zoomBy(1 / 1.4)), find, names, legend),
      wrap,
      g.missing.length ? h("p", { class: "error", text: `${g.missing.length} parent(s) named by records are not in this store: ` +
        g.missing.map((m) => m.slice(0, 12)).join(", ") }) : null,
      g.nodes.length ? null : h("p", { class: "muted", text: "No snapshot yet: save one (store.save, ckpt import) and reload." }));

    // pan and zoom: one transform on the viewport group
    let k = 1, tx = 0, ty = 0;
    const apply = () => view.setAttribute("transform", `translate(${tx},${ty}) scale(${k})`);
    const box = () => svg.getBoundingClientRect();
    function zoomAt(px, py, f) {
      const nk = Math.min(4, Math.max(0.02, k * f));
      tx = px - (px - tx) * (nk / k); ty = py - (py - ty) * (nk / k); k = nk; apply();
    }
    function zoomBy(f) { const r = box(); zoomAt(r.width / 2, r.height / 2, f); }
    function fit(all) {
      const r = box();
      const fk = Math.min(1, r.width / Math.max(g.width, 1), r.height / Math.max(g.height, 1));
      k = all ? fk : Math.max(fk, Math.min(1, r.height / Math.max(g.height, 1), 0.5));
      ty = Math.max(0, (r.height - g.height * k) / 2);
      tx = g.width * k <= r.width ? (r.width - g.width * k) / 2 : r.width - g.width * k; // the newest saves
      apply();
    }
    svg.addEventListener("wheel", (e) => {
      e.preventDefault();
      const r = box();
      zoomAt(e.clientX - r.left, e.clientY - r.top, Math.exp(-e.deltaY * 0.0015));
    }, { passive: false });
    let drag = null, moved = false;
    svg.addEventListener("pointerdown", (e) => { drag = { x: e.clientX, y: e.clientY, tx, ty }; moved = false; });
    svg.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
      if (!moved && Math.hypot(dx, dy) < 4) return;
      if (!moved) { moved = true; svg.setPointerCapture(e.pointerId); svg.classList.add("dragging"); }
      tx = drag.tx + dx; ty = drag.ty + dy; apply();
    });
    const end = () => { drag = null; svg.classList.remove("dragging"); };
    svg.addEventListener("pointerup", end);
    svg.addEventListener("pointercancel", end);
    svg.addEventListener("click", (e) => { if (moved) { e.preventDefault(); e.stopPropagation(); moved = false; } }, true);
    find.addEventListener("change", () => {
      const q = find.value.trim();
      if (!q) return;
      const id = (g.branches[q]) || (g.tags[q] && g.tags[q].id) || (g.nodes.find((n) => n.id.startsWith(q.toLowerCase())) || {}).id;
      const n = id && byId.get(id);
      for (const el of nodes.querySelectorAll(".found")) el.classList.remove("found");
      if (!n) { find.setCustomValidity("no branch, tag or id " + q); find.reportValidity(); return; }
      find.setCustomValidity("");
      nodes.querySelector(`[data-id="${n.id}"]`).classList.add("found");
      const r = box();
      k = Math.max(k, 0.8); tx = r.width / 2 - n.x * k; ty = r.height / 2 - n.y * k; apply();
    });
    fit(false);
    svg.dataset.ready = "1";
  }

  // -- one snapshot -------------------------------------------------------------------------------
  async function snapPage(rev) {
    document.title = "ckpt · " + rev;
    main.classList.add("page");
    const d = await api("/api/snap/" + enc(rev));
    const snap = d.snapshot;
    document.title = "ckpt · " + snap.short_id + (snap.model ? " " + snap.model : "");
    const row = (k, v) => (v === null || v === undefined || v === "" ? [] : [h("dt", { text: k }), h("dd", {}, v)]);
    const metrics = Object.entries(snap.metrics);
    const lineage = h("div", { class: "lineage", id: "lineage" });
    for (const entry of d.lineage) {
      if (entry.steps === 1) lineage.append(h("span", { class: "arrow", text: `─${entry.relation}→` }));
      else if (entry.steps > 1) lineage.append(h("span", { class: "arrow steps", text: `─continue ×${entry.steps}→` }));
      const a = snapLink(entry);
      if (entry.id === snap.id) a.classList.add("current");
      lineage.append(a);
    }
    const links = h("div", { class: "links" },
      d.parents.length ? h("a", { href: diffHref(d.parents[0].id, snap.id), id: "diff-parent", text: "compare with its parent" }) : null,
      h("a", { href: runHref(snap.id), text: "metrics of its run" }),
      ...snap.refs.branches.map((b) => h("a", { href: runHref(b), text: "run view of " + b })));
    const list = (items, empty) => items.length
      ? h("ul", {}, items.map((p) => h("li", {}, snapLink(p), " ", h("span", { class: "badge relation", text: p.relation }),
        " ", badges(p.refs), p.pruned ? h("span", { class: "badge pruned", text: "pruned" }) : null)))
      : h("p", { class: "muted", text: empty });
    const parts = [
      h("h1", {}, h("span", { class: "mono", text: "snapshot " + snap.short_id }), h("span", { class: "badge relation", text: snap.relation }),
        badges(snap.refs), snap.pruned ? h("span", { class: "badge pruned", text: "pruned: tensors released, record kept" }) : null),
      links,
      h("dl", { class: "record", id: "record" },
        row("id", h("span", { class: "mono", text: snap.id })),
        row("model", snap.model),
        row("step", snap.step === null ? null : String(snap.step)),
        row("epoch", snap.epoch === null ? null : String(snap.epoch)),
        row("message", snap.message === null ? null : h("span", { class: "message", text: snap.message })),
        row("created", snap.created_at),
        row("base", d.base ? snapLink(d.base) : null),
        row("ckpt version", snap.ckpt_version),
        row("history", `${d.history_length} snapshot${d.history_length === 1 ? "" : "s"} from the root to here along first parents`)),
      h("h2", { text: "Metrics" }),
      metrics.length ? h("table", { id: "metrics" }, h("tbody", {}, metrics.map(([k, v]) => h("tr", {}, h("th", { text: k }), h("td", { class: "num", text: num(v) })))))
        : h("p", { class: "muted", text: "no metrics" }),
      h("h2", { text: "Lineage" }), lineage,
      h("h2", { text: "Parents" }), list(d.parents, "none: a root"),
      h("h2", { text: "Children" }), list(d.children, "none yet"),
    ];
    if (Object.keys(snap.metadata).length) {
      parts.push(h("h2", { text: "Metadata" }), h("pre", { id: "metadata", text: JSON.stringify(snap.metadata, null, 2) }));
    }
    parts.push(h("h2", { text: "Files" }), d.files.length
      ? h("table", { id: "files" }, h("thead", {}, h("tr", {}, h("th", { text: "path" }), h("th", { class: "num", text: "size" }))),
        h("tbody", {}, d.files.map((f) => h("tr", {}, h("td", { class: "mono", text: f.path }), h("td", { class: "num", text: bytes(f.size) })))))
      : h("p", { class: "muted", text: "no attached files" }));
    const t = d.tensors;
    parts.push(h("h2", { text: "Tensors" }));
    if (!t.available) parts.push(h("p", { class: "muted", text: t.note }));
    else {
      const stored = t.stored_bytes === null || t.stored_bytes === undefined ? "" : `, ${bytes(t.stored_bytes)} stored`;
      parts.push(h("p", { id: "tensor-summary", text: `${plural(t.count, "tensor")}, ${bytes(t.bytes)} (raw)${stored}` + (t.note ? " · " + t.note : "") }));
      parts.push(h("table", { id: "by-dtype" }, h("thead", {}, h("tr", {}, h("th", { text: "dtype" }), h("th", { class: "num", text: "tensors" }), h("th", { class: "num", text: "bytes" }))),
        h("tbody", {}, t.by_dtype.map((x) => h("tr", {}, h("td", { text: x.dtype }), h("td", { class: "num", text: x.count }), h("td", { class: "num", text: bytes(x.bytes) }))))));
      const layers = h("div", { id: "layers" });
      for (const layer of t.layers) {
        layers.append(h("details", { class: "layer" },
          h("summary", {}, h("span", { class: "mono", text: layer.layer }), ` — ${layer.count} tensor${layer.count === 1 ? "" : "s"}, ${bytes(layer.bytes)}`),
          h("table", {}, h("tbody", {}, layer.tensors.map((x) => h("tr", { class: "tensor" },
            h("td", { class: "mono", text: x.name }), h("td", { text: x.dtype }), h("td", { class: "mono", text: "(" + x.shape.join(", ") + ")" }),
            h("td", { class: "num", text: bytes(x.bytes) })))))));
      }
      parts.push(h("h3", { text: "By layer" }), layers);
    }
    parts.push(h("h2", { text: "Get it back" }));
    if (d.commands.length) {
      parts.push(h("div", { id: "commands" }, d.commands.map((c) => h("figure", {}, h("figcaption", { text: c.label }), h("pre", {}, h("code", { text: c.text }))))));
    } else parts.push(h("p", { class: "muted", text: "pruned: its tensors were released, so there is nothing to restore" }));
    fill(main, ...parts);
    main.dataset.ready = "1";
  }

  // -- a run's metrics ------------------------------------------------------------------------------
  function markers(u, names, saves, monitor, series) {
    const ctx = u.ctx, dpr = devicePixelRatio || 1;
    ctx.save();
    ctx.beginPath();
    ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
    ctx.clip();
    names.forEach((name, i) => {
      const color = u.series[i + 1].stroke();
      const info = series[name];
      const bestIdx = saves.findIndex((sv) => sv.id === info.best);
      if (name === monitor && bestIdx >= 0 && info.since_best > 0) { // the stretch without improvement
        const x0 = u.valToPos(saves[bestIdx].x, "x", true), x1 = u.valToPos(saves[saves.length - 1].x, "x", true);
        ctx.fillStyle = "rgba(230, 126, 34, 0.08)";
        ctx.fillRect(x0, u.bbox.top, Math.max(1, x1 - x0), u.bbox.height);
      }
      saves.forEach((sv, j) => {
        const raw = sv.metrics[name];
        if (raw === undefined) return;
        const cx = u.valToPos(sv.x, "x", true);
        if (!finite(raw)) { // a diverged save: an x on the top edge
          const cy = u.bbox.top + 6 * dpr;
          ctx.strokeStyle = "#c0392b"; ctx.lineWidth = 2 * dpr; ctx.beginPath();
          ctx.moveTo(cx - 4 * dpr, cy - 4 * dpr); ctx.lineTo(cx + 4 * dpr, cy + 4 * dpr);
          ctx.moveTo(cx + 4 * dpr, cy - 4 * dpr); ctx.lineTo(cx - 4 * dpr, cy + 4 * dpr); ctx.stroke();
          return;
        }
        const cy = u.valToPos(raw, "y", true);
        ctx.beginPath();
        ctx.arc(cx, cy, (j === bestIdx ? 7 : 3.5) * dpr, 0, 2 * Math.PI);
        ctx.lineWidth = (j === bestIdx ? 2.5 : 1.5) * dpr;
        ctx.strokeStyle = j === bestIdx ? "#000" : color;
        ctx.fillStyle = sv.pruned ? "#fff" : color;
        ctx.fill(); ctx.stroke();
      });
    });
    ctx.restore();
  }

  async function runPage(rev) {
    main.classList.add("page");
    document.title = "ckpt · run " + rev;
    const scope = new URLSearchParams(location.search).get("scope") === "lineage" ? "lineage" : "run";
    const d = await api("/api/run/" + enc(rev) + "?scope=" + scope);
    const saves = d.saves;
    const prunedCount = saves.filter((sv) => sv.pruned).length;
    const scopeLink = h("a", { href: runHref(rev) + (scope === "run" ? "?scope=lineage" : ""),
      text: scope === "run" ? "show the whole lineage (parent lines too)" : "show this run only" });
    const parts = [
      h("h1", {}, h("span", { text: "run " }), h("span", { class: "mono", text: rev })),
      h("div", { class: "controls" },
        h("span", { id: "run-summary", text: `${saves.length} save${saves.length === 1 ? "" : "s"} · ${prunedCount} pruned by retention (hollow) · x: ${d.x_label === "step" ? "step" : "save number"}` }),
        d.head ? h("a", { href: snapHref(d.head), text: "newest save" }) : null, scopeLink),
    ];
    const notes = [];
    for (const name of d.metrics) {
      const info = d.series[name];
      const best = saves.find((sv) => sv.id === info.best);
      if (!best) continue;
      const where = best.step !== null ? "step " + best.step : "save " + best.x;
      notes.push(h("li", {}, `best ${name} (${info.mode === "min" ? "lowest" : "highest"}): ${num(best.metrics[name])} at ${where}, `,
        h("a", { href: snapHref(best.id), class: "mono", text: best.short_id }),
        name === d.monitor && info.since_best > 0
          ? ` — then ${info.since_best} save${info.since_best === 1 ? "" : "s"} without improvement (shaded; records do not say whether early stopping fired)` : ""));
    }
    if (notes.length) parts.push(h("ul", { class: "notes", id: "best-notes" }, notes));
    if (!d.metrics.length) parts.push(h("p", { class: "muted", text: "No save of this run carries metrics (save with metrics={...} to see curves)." }));
    const charts = [];
    d.groups.forEach((grp, gi) => {
      const plot = h("div", { class: "plot" });
      const withMetric = saves.filter((sv) => grp.metrics.some((m) => sv.metrics[m] !== undefined)).length;
      const section = h("section", { class: "chart", "data-group": grp.group, "data-points": withMetric },
        h("h2", { text: grp.group + (grp.metrics.includes(d.monitor) ? " (monitored)" : "") }), plot);
      parts.push(section);
      charts.push([grp, plot, gi]);
    });
    const cols = d.metrics;
    const bests = new Set(Object.values(d.series).map((x) => x.best));
    const row = (sv, i) => h("tr", { class: "save" + (sv.pruned ? " pruned" : "") + (bests.has(sv.id) ? " best" : ""), "data-id": sv.id },
      h("td", { class: "num", text: i + 1 }), h("td", { class: "num", text: sv.step === null ? "" : sv.step }),
      h("td", { class: "num", text: sv.epoch === null ? "" : sv.epoch }),
      cols.map((m) => h("td", { class: "num", text: num(sv.metrics[m]) })),
      h("td", { text: sv.pruned ? "pruned" : "kept" }),
      h("td", {}, h("a", { href: snapHref(sv.id), class: "mono", text: sv.short_id })),
      h("td", {}, badges(sv.refs)));
    const body = h("tbody", {});
    const first = Math.max(0, saves.length - TABLE_ROWS); // a long run: the newest saves, the rest on demand
    saves.slice(first).forEach((sv, i) => body.append(row(sv, first + i)));
    const more = first > 0 ? h("button", { type: "button", id: "all-saves", text: first === 1 ? "show the older save" : `show the ${first} older saves`, onclick: () => {
      body.prepend(...saves.slice(0, first).map(row)); more.remove();
    } }) : null;
    parts.push(h("h2", { text: "Saves" }), more, h("table", { id: "saves" },
      h("thead", {}, h("tr", {}, h("th", { class: "num", text: "#" }), h("th", { class: "num", text: "step" }), h("th", { class: "num", text: "epoch" }),
        cols.map((m) => h("th", { class: "num", text: m })), h("th", { text: "kept" }), h("th", { text: "snapshot" }), h("th", { text: "refs" }))),
      body));
    fill(main, ...parts);
    for (const [grp, plot] of charts) {
      const xs = saves.map((sv) => sv.x);
      const data = [xs, ...grp.metrics.map((m) => saves.map((sv) => (finite(sv.metrics[m]) ? sv.metrics[m] : null)))];
      const colors = grp.metrics.map((m) => PALETTE[d.metrics.indexOf(m) % PALETTE.length]);
      const opts = {
        width: Math.max(320, plot.clientWidth || 800), height: 260,
        scales: { x: { time: false, range: (u, lo, hi) => { const pad = (hi - lo) * 0.03 || 1; return [lo - pad, hi + pad]; } } },
        axes: [{ label: d.x_label === "step" ? "step" : "save number" }, {}],
        series: [{ label: d.x_label }, ...grp.metrics.map((m, i) => ({ label: m, stroke: colors[i], width: 2, spanGaps: true, points: { show: false } }))],
        hooks: { draw: [(u) => markers(u, grp.metrics, saves, d.monitor, d.series)] },
      };
      const u = new uPlot(opts, data, plot);
      u.over.addEventListener("click", () => {
        const i = u.cursor.idx;
        if (i !== null && i !== undefined && saves[i]) location.href = snapHref(saves[i].id);
      });
      window.addEventListener("resize", () => u.setSize({ width: Math.max(320, plot.clientWidth), height: 260 }));
    }
    main.dataset.ready = "1";
  }

  // -- the difference between two snapshots ------------------------------------------------------------
  const TABLE_ROWS = 500; // rows of a run's table drawn at once
  const DECADES = 4; // bar length: log scale over this many powers of ten below the largest change
  function heat(t) { // 0 → pale yellow, 1 → deep red
    const c0 = [253, 231, 160], c1 = [192, 57, 43];
    return `rgb(${c0.map((c, i) => Math.round(c + (c1[i] - c) * t)).join(",")})`;
  }
  function change(v) { return v === null || v === undefined ? "–" : typeof v === "string" ? v : v === 0 ? "0" : v < 1e-3 ? v.toExponential(2) : v.toFixed(4); }

  async function diffPage(spec) {
    main.classList.add("page");
    document.title = "ckpt · diff";
    let [a, b] = ["", ""];
    if (spec) { const i = spec.indexOf(".."); if (i > 0) { a = spec.slice(0, i); b = spec.slice(i + 2); } }
    const ia = h("input", { name: "a", value: a, placeholder: "A: main~1", "aria-label": "from revision" });
    const ib = h("input", { name: "b", value: b, placeholder: "B: main", "aria-label": "to revision" });
    const form = h("form", { class: "diff-form", onsubmit: (e) => {
      e.preventDefault();
      if (ia.value.trim() && ib.value.trim()) location.href = diffHref(ia.value.trim(), ib.value.trim());
    } }, "from ", ia, " to ", ib, h("button", { type: "submit", text: "Compare" }));
    const out = h("div", { id: "diff" }, spec ? h("p", { class: "loading", text: "Comparing (reads the tensors that differ)…" }) : h("p", { class: "muted", text: "Give two revisions: branches, tags, ids, main~2 …" }));
    fill(main, h("h1", { text: "Difference" }), form, out);
    if (!spec) return;
    if (!a || !b) throw new ApiError("a diff is written A..B, got " + JSON.stringify(spec), "e.g. /diff/main~1..main");
    document.title = "ckpt · diff " + a + ".." + b;
    let d;
    try { d = await api("/api/diff/" + enc(a) + ".." + enc(b)); } catch (e) { showError(out, e); main.dataset.ready = "error"; return; }
    const parts = [
      h("p", { id: "diff-heads" }, "from ", snapLink(d.a_snapshot), " (", a, ") to ", snapLink(d.b_snapshot), " (", b, ")"),
      h("p", { id: "diff-counts", text: `${d.added} added, ${d.removed} removed, ${d.changed} changed, ${d.unchanged} unchanged ${d.unchanged === 1 ? "tensor" : "tensors"} · B adds ${bytes(d.added_bytes)} (${plural(d.added_chunks, "chunk")}) to a store holding A` + (d.state_changed ? " · the state tree differs (structure or non-tensor values)" : "") }),
      h("h2", { text: "Relative change by layer, ‖B−A‖/‖A‖" }),
      h("p", { class: "muted", text: `largest of each layer's tensors; bars on a log scale over ${DECADES} powers of ten below the largest change` }),
    ];
    const layers = d.layers;
    const values = layers.map((l) => l.max_relative_change).filter((v) => typeof v === "number" && v > 0);
    const hi = values.length ? Math.log10(Math.max(...values)) : 0, lo = hi - DECADES;
    const bars = h("div", { class: "bars", id: "layer-bars" });
    for (const l of layers) {
      const v = l.max_relative_change;
      const t = typeof v === "number" && v > 0 ? Math.min(1, Math.max(0, (Math.log10(v) - lo) / (hi - lo))) : 0;
      const bar = h("div", { class: "bar" });
      bar.style.width = (typeof v === "number" && v > 0 ? 4 + 96 * t : 0) + "%";
      bar.style.background = heat(t);
      const counts = [l.added ? l.added + " added" : "", l.removed ? l.removed + " removed" : "", l.changed ? l.changed + " changed" : ""].filter(Boolean).join(", ");
      bars.append(h("span", { class: "name mono", text: l.layer }), h("div", { class: "track", title: counts || "unchanged" }, bar),
        h("span", { class: "value", "data-layer": l.layer, text: typeof v === "number" ? change(v) : (counts || "unchanged") }));
    }
    parts.push(layers.length ? bars : h("p", { class: "muted", text: "no tensors" }));
    const differing = d.tensors.filter((x) => x.status !== "unchanged");
    parts.push(h("h2", { text: `Tensors that differ (${differing.length})` }));
    if (differing.length) {
      parts.push(h("table", { id: "diff-tensors" }, h("thead", {}, h("tr", {}, ["", "tensor", "dtype", "shape", "‖B−A‖/‖A‖"].map((c) => h("th", { text: c })))),
        h("tbody", {}, differing.map((x) => h("tr", { class: "status-" + x.status },
          h("td", { text: { added: "+", removed: "−", changed: "~" }[x.status] }), h("td", { class: "mono", text: x.name }),
          h("td", { text: x.dtype_a && x.dtype_b && x.dtype_a !== x.dtype_b ? x.dtype_a + " → " + x.dtype_b : (x.dtype_b || x.dtype_a) }),
          h("td", { class: "mono", text: [x.shape_a, x.shape_b].filter(Boolean).map((sh) => "(" + sh.join(", ") + ")").filter((v, i, arr) => arr.indexOf(v) === i).join(" → ") }),
          h("td", { class: "num", text: x.status === "changed" ? (x.relative_change !== null ? change(x.relative_change) : x.note || "") : "" }))))));
    } else parts.push(h("p", { class: "muted", text: "no tensor differs" }));
    if (d.files.length) {
      parts.push(h("h2", { text: "Files that differ" }), h("ul", { id: "diff-files" }, d.files.map((f) =>
        h("li", { class: "status-" + f.status, text: `${f.status}: ${f.path} (${[f.size_a, f.size_b].filter((x) => x !== null).map(bytes).join(" → ")})` }))));
    }
    fill(out, ...parts);
    main.dataset.ready = "1";
  }

  // -- routing --------------------------------------------------------------------------------------
  async function start() {
    const path = location.pathname;
    let page;
    if (path === "/") page = () => treePage();
    else if (path.startsWith("/snap/")) { const rev = tail("/snap/"); page = () => snapPage(rev); header(null); }
    else if (path.startsWith("/run/")) { const rev = tail("/run/"); page = () => runPage(rev); header(rev); }
    else if (path === "/diff" || path.startsWith("/diff/")) { const spec = path === "/diff" ? "" : tail("/diff/"); page = () => diffPage(spec); }
    if (path === "/" || path.startsWith("/diff")) header(null);
    if (!page) { showError(main, new ApiError("no such page: " + path, "the pages are /, /run/<branch>, /snap/<rev>, /diff/<a>..<b>")); return; }
    try {
      await page();
      main.dataset.drawnMs = String(Math.round(performance.now())); // navigation start → page drawn (benchmarks/ui.py)
    } catch (e) {
      showError(main, e);
      main.dataset.ready = "error";
    }
  }
  start();
})();
