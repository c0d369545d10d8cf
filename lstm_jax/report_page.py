"""The inspection report's page: HTML, CSS and script in one string, no network. The data replaces
``/*DATA*/`` inside a ``<script type="application/json">`` (escaped by :func:`lstm_jax.report.embed_json`);
the script draws it with ``textContent`` and DOM nodes only, never parsing text as markup. It
records errors in ``<body data-errors>`` and sets ``<body data-rendered="1">`` once all is drawn."""

PAGE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>lstm_jax inspect</title>
<style>
:root { --ink:#1d2330; --muted:#667085; --line:#e4e7ec; --bg:#fafbfc; --pos:214,69,65; --neg:45,110,200; }
* { box-sizing:border-box; }
body { margin:0; font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif; color:var(--ink); background:var(--bg); }
header { padding:18px 28px 12px; background:#fff; border-bottom:1px solid var(--line); }
h1 { font-size:20px; margin:0 0 4px; } h2 { font-size:16px; margin:0 0 10px; }
.muted { color:var(--muted); } .row { display:flex; gap:18px; flex-wrap:wrap; align-items:flex-start; }
main { padding:18px 28px; display:grid; gap:18px; }
section { background:#fff; border:1px solid var(--line); border-radius:10px; padding:16px 18px; }
.stat { display:inline-block; margin-right:22px; } .stat b { font-size:18px; display:block; }
select, input, button { font:inherit; padding:3px 6px; border:1px solid #c9ced6; border-radius:6px; background:#fff; }
button { cursor:pointer; } button:hover { background:#f0f4ff; }
#features { display:grid; grid-template-columns:max-content 1fr; gap:4px 12px; margin:10px 0 12px; align-items:center; }
#features .feat { font-weight:600; font-size:13px; }
.unit { margin:1px 4px 1px 0; font-size:12px; font-family:ui-monospace,monospace; }
.unit.on { background:#dbe6ff; border-color:#7a9cf0; }
#text { font:13px/1.9 ui-monospace,SFMono-Regular,Menlo,monospace; white-space:pre-wrap; word-break:break-all;
        max-height:520px; overflow:auto; border:1px solid var(--line); border-radius:8px; padding:10px; }
#text span { border-radius:2px; } #text span.nl { color:#b0b6c2; }
#tip { position:fixed; pointer-events:none; background:#1d2330; color:#fff; padding:8px 10px; border-radius:8px;
       font:12px/1.4 ui-monospace,monospace; display:none; z-index:9; min-width:180px; }
#tip .bar { display:inline-block; height:8px; background:#7aa2ff; margin-left:6px; vertical-align:middle; }
svg text { font:11px system-ui,sans-serif; fill:#475467; } .legend { font-size:12px; }
.swatch { display:inline-block; width:12px; height:12px; border-radius:3px; margin:0 4px 0 10px; vertical-align:-2px; }
table { border-collapse:collapse; font-size:12px; } td, th { padding:3px 10px 3px 0; text-align:left; border-bottom:1px solid var(--line); }
#scale { display:inline-block; width:160px; height:10px; border-radius:3px; vertical-align:middle;
         background:linear-gradient(90deg,rgb(var(--neg)),#fff,rgb(var(--pos))); }
details summary { cursor:pointer; color:var(--muted); }
</style></head>
<body>
<script>
window.onerror = function (m, src, line) { var b = document.body; b.setAttribute("data-errors", (b.getAttribute("data-errors") || "") + m + " (line " + line + "); "); };
window.addEventListener("unhandledrejection", function (e) { window.onerror(String(e.reason), "", 0); });
</script>
<script type="application/json" id="data">/*DATA*/</script>
<header><h1 id="title"></h1><div id="meta" class="muted"></div><div id="stats" style="margin-top:8px"></div></header>
<main>
<section><h2>Units against the text</h2>
<div class="muted">The text coloured by one unit's activation (red positive, blue negative, scaled by the unit's largest |value| here <span id="scale"></span>).
Hover a character for the unit's value and the model's top 5 next tokens. Top units per feature (Pearson's r over all traced tokens):</div>
<div id="features"></div>
<div class="row" style="align-items:center; margin-bottom:8px">
<label>layer <select id="layer"></select></label><label>signal <select id="signal"></select></label>
<label>unit <input id="unit" type="number" min="0" value="0" style="width:80px"></label>
<button id="prev">&#8592;</button><button id="next">&#8594;</button><span id="sel" class="muted"></span></div>
<div id="text"></div></section>
<section><h2>Gate saturation</h2><div class="muted">Each dot a unit: the fraction of steps its gate is left-saturated (&lt; 0.1) against right-saturated (&gt; 0.9), as Karpathy et al. (2015), Figure 3.</div>
<div id="sat" class="row" style="margin-top:10px"></div><div id="satcmp" style="margin-top:10px"></div></section>
<section><h2>Gradient flow</h2><div class="muted">Mean norm of &#8706;L<sub>t</sub>/&#8706;s<sub>t&#8722;k</sub> for each state field s (h, c) against the distance k, log scale.</div>
<div id="flow" style="margin-top:10px"></div></section>
<section><h2>Run</h2><details><summary>config</summary><table id="config"></table></details></section>
</main><div id="tip"></div>
<script>
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const $ = (id) => document.getElementById(id);
const SVGNS = "http://www.w3.org/2000/svg";
const COLORS = ["#d6453f", "#2d6ec8", "#2f9e5b", "#e08e1b", "#8a4fd1", "#17a2b8", "#6b7280", "#c2185b"];
function el(tag, attrs, text, parent) {
  const e = tag.startsWith("svg:") ? document.createElementNS(SVGNS, tag.slice(4)) : document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (parent) parent.appendChild(e);
  return e;
}
const show = (tok) => tok === "\n" ? "\\n" : tok === " " ? "\u2423" : tok === "\t" ? "\\t" : tok;

// header
const R = D.run;
$("title").textContent = "lstm_jax inspect: " + R.workdir;
document.title = "lstm_jax inspect: " + R.workdir;
const src = D.traced.path ? "file " + D.traced.path : "the " + D.traced.split + " split of " + D.traced.corpus;
$("meta").textContent = R.cell + " (" + R.model + "), " + R.num_layers + " x " + R.num_hiddens + ", " +
  R.num_params.toLocaleString() + " parameters, checkpoint step " + R.step + " (" + D.traced.checkpoint + "); traced " +
  D.traced.num_tokens.toLocaleString() + " tokens of " + src;
for (const [k, v] of [["nats/token", D.scores.loss_nats], ["bits/token", D.scores.bits], ["perplexity", D.scores.perplexity]]) {
  const s = el("span", {class: "stat"}, null, $("stats")); el("b", {}, v, s); el("span", {class: "muted"}, k, s);
}

// the text, coloured by a unit
const acts = {};
for (const key in D.activations) {
  const a = D.activations[key], raw = atob(a.data), q = new Int8Array(raw.length);
  for (let i = 0; i < raw.length; i++) q[i] = (raw.charCodeAt(i) << 24) >> 24;
  acts[key] = {width: a.width, scale: a.scale, q: q};
}
const layers = D.signals.length;
for (let l = 0; l < layers; l++) el("option", {value: l}, "layer " + l, $("layer"));
function fillSignals() {
  const cur = $("signal").value; $("signal").textContent = "";
  for (const name in D.signals[+$("layer").value]) el("option", {value: name}, name, $("signal"));
  if (cur && D.signals[+$("layer").value][cur] !== undefined) $("signal").value = cur;
}
fillSignals();
if (D.signals[0].c !== undefined) $("signal").value = "c";
const spans = [];
D.text.forEach(function (tok, t) {
  const s = el("span", tok === "\n" ? {class: "nl"} : {}, tok === "\n" ? "\u21b5\n" : (D.word_level ? tok + " " : tok), $("text"));
  s.dataset.t = t; spans.push(s);
});
function current() { return acts[$("layer").value + "/" + $("signal").value]; }
function value(a, t, u) { return a.q[t * a.width + u] / 127 * a.scale[u]; }
function paint() {
  const a = current(), u = Math.max(0, Math.min(+$("unit").value || 0, a.width - 1));
  $("unit").value = u; $("unit").max = a.width - 1;
  spans.forEach(function (s, t) {
    const v = a.q[t * a.width + u] / 127;
    s.style.background = "rgba(" + (v >= 0 ? "214,69,65" : "45,110,200") + "," + Math.abs(v).toFixed(3) + ")";
  });
  $("sel").textContent = "layer " + $("layer").value + " " + $("signal").value + "[" + u + "], |max| " + a.scale[u].toPrecision(3);
  document.querySelectorAll(".unit").forEach(function (b) {
    b.classList.toggle("on", b.dataset.key === $("layer").value + "/" + $("signal").value + "/" + u);
  });
}
function pick(l, name, u) { $("layer").value = l; fillSignals(); $("signal").value = name; $("unit").value = u; paint(); }
$("layer").onchange = function () { fillSignals(); paint(); };
$("signal").onchange = paint; $("unit").oninput = paint;
$("prev").onclick = function () { $("unit").value = Math.max(0, +$("unit").value - 1); paint(); };
$("next").onclick = function () { $("unit").value = +$("unit").value + 1; paint(); };
for (const f of D.features) {
  el("span", {class: "feat"}, f, $("features"));
  const cell = el("span", {}, null, $("features"));
  for (const u of D.units.filter((u) => u.feature === f)) {
    const b = el("button", {class: "unit"}, "L" + u.layer + " " + u.signal + "[" + u.unit + "] r=" + u.correlation.toFixed(2), cell);
    b.dataset.key = u.layer + "/" + u.signal + "/" + u.unit;
    b.onclick = () => pick(u.layer, u.signal, u.unit);
  }
}
const best = D.units.find((u) => u.feature === "position_in_line") || D.units[0];
if (best) pick(best.layer, best.signal, best.unit); else paint();
const tip = $("tip");
$("text").addEventListener("mousemove", function (e) {
  const s = e.target; if (s.dataset.t === undefined) { tip.style.display = "none"; return; }
  const t = +s.dataset.t, a = current(), u = +$("unit").value;
  tip.textContent = "";
  el("div", {}, "t=" + t + "  " + JSON.stringify(D.text[t]) + "   value " + value(a, t, u).toFixed(3), tip);
  el("div", {style: "color:#aab4c8;margin:3px 0"}, D.loss[t] === null ? "last token" : "loss of the next token: " + D.loss[t].toFixed(2) + " nats", tip);
  D.top_ids[t].forEach(function (id, j) {
    const p = D.top_probs[t][j], r = el("div", {}, (JSON.stringify(show(D.vocab[id])) + "          ").slice(0, 10) + p.toFixed(3), tip);
    el("span", {class: "bar", style: "width:" + Math.round(p * 80) + "px"}, null, r);
  });
  tip.style.display = "block";
  tip.style.left = Math.min(e.clientX + 14, window.innerWidth - 240) + "px"; tip.style.top = (e.clientY + 16) + "px";
});
$("text").addEventListener("mouseleave", () => { tip.style.display = "none"; });

// plots
function axes(svg, w, h, m, xlab, ylab) {
  el("svg:line", {x1: m.l, y1: h - m.b, x2: w - m.r, y2: h - m.b, stroke: "#98a2b3"}, null, svg);
  el("svg:line", {x1: m.l, y1: m.t, x2: m.l, y2: h - m.b, stroke: "#98a2b3"}, null, svg);
  el("svg:text", {x: (m.l + w - m.r) / 2, y: h - 4, "text-anchor": "middle"}, xlab, svg);
  el("svg:text", {x: 12, y: (m.t + h - m.b) / 2, "text-anchor": "middle", transform: "rotate(-90 12 " + (m.t + h - m.b) / 2 + ")"}, ylab, svg);
}
const gates = [...new Set(D.saturation.map((s) => s.gate))];
for (let l = 0; l < layers; l++) {
  const rows = D.saturation.filter((s) => s.layer === l); if (!rows.length) continue;
  const box = el("div", {}, null, $("sat")), W = 280, H = 280, m = {l: 40, r: 10, t: 22, b: 36};
  const svg = el("svg:svg", {width: W, height: H}, null, box);
  el("svg:text", {x: W / 2, y: 14, "text-anchor": "middle"}, "layer " + l, svg);
  axes(svg, W, H, m, "fraction left-saturated", "fraction right-saturated");
  const sx = (v) => m.l + v * (W - m.l - m.r), sy = (v) => H - m.b - v * (H - m.t - m.b);
  el("svg:line", {x1: sx(0), y1: sy(1), x2: sx(1), y2: sy(0), stroke: "#e4e7ec", "stroke-dasharray": "4 3"}, null, svg);
  for (const v of [0, 0.5, 1]) { el("svg:text", {x: sx(v), y: H - m.b + 13, "text-anchor": "middle"}, v, svg);
                                 el("svg:text", {x: m.l - 4, y: sy(v) + 4, "text-anchor": "end"}, v, svg); }
  for (const s of rows) {
    const color = COLORS[gates.indexOf(s.gate) % COLORS.length];
    s.left.forEach((x, u) => el("svg:circle", {cx: sx(x), cy: sy(s.right[u]), r: 2.6, fill: color, "fill-opacity": 0.55}, null, svg));
  }
}
if (gates.length) {
  const lg = el("div", {class: "legend"}, null, $("sat"));
  gates.forEach((g, i) => { el("span", {class: "swatch", style: "background:" + COLORS[i % COLORS.length]}, null, lg); el("span", {}, g, lg); });
} else el("div", {class: "muted"}, "This cell has no gates.", $("sat"));
const runs = D.compare.length ? D.compare : [{workdir: R.workdir, cell: R.cell, gradient_flow: D.gradient_flow, saturation: []}];
if (D.compare.length) {
  const tbl = el("table", {}, null, $("satcmp")), hr = el("tr", {}, null, tbl);
  for (const h of ["run", "cell", "nats/token", "layer", "gate", "mean left-saturated", "mean right-saturated"]) el("th", {}, h, hr);
  for (const r of D.compare) for (const s of (r.saturation.length ? r.saturation : [{layer: "-", gate: "(none)", left: "", right: ""}])) {
    const tr = el("tr", {}, null, tbl);
    for (const v of [r.workdir, r.cell, r.scores.loss_nats, s.layer, s.gate, s.left, s.right]) el("td", {}, v, tr);
  }
}
(function flow() {
  const W = 760, H = 380, m = {l: 58, r: 16, t: 12, b: 40}, svg = el("svg:svg", {width: W, height: H}, null, $("flow"));
  const curves = [];
  runs.forEach(function (r, i) {
    for (const c of r.gradient_flow.curves) curves.push({run: i, label: (runs.length > 1 ? r.workdir + " (" + r.cell + ") " : "") + "layer " + c.layer + " " + c.field,
                                                          norm: c.norm, dash: c.field === "h" ? "" : "5 3", width: 1 + c.layer});
  });
  const vals = curves.flatMap((c) => c.norm).filter((v) => v > 0);
  if (!vals.length) { el("div", {class: "muted"}, "No gradient reached back.", $("flow")); return; }
  const lo = Math.floor(Math.log10(Math.min(...vals))), hi = Math.ceil(Math.log10(Math.max(...vals)));
  const K = D.gradient_flow.distance[D.gradient_flow.distance.length - 1] || 1;
  const sx = (k) => m.l + k / K * (W - m.l - m.r), sy = (v) => H - m.b - (Math.log10(v) - lo) / Math.max(hi - lo, 1) * (H - m.t - m.b);
  axes(svg, W, H, m, "distance k (steps back)", "||dL_t / ds_(t-k)||");
  for (let e = lo; e <= hi; e += Math.max(1, Math.ceil((hi - lo) / 8))) {
    el("svg:line", {x1: m.l, x2: W - m.r, y1: sy(10 ** e), y2: sy(10 ** e), stroke: "#f0f2f5"}, null, svg);
    el("svg:text", {x: m.l - 6, y: sy(10 ** e) + 4, "text-anchor": "end"}, "1e" + e, svg);
  }
  for (let k = 0; k <= K; k += Math.max(1, Math.round(K / 10))) el("svg:text", {x: sx(k), y: H - m.b + 14, "text-anchor": "middle"}, k, svg);
  const lg = el("div", {class: "legend"}, null, $("flow"));
  curves.forEach(function (c, i) {
    const color = COLORS[(runs.length > 1 ? c.run : i) % COLORS.length];
    const pts = c.norm.map((v, k) => v > 0 ? sx(k).toFixed(1) + "," + sy(v).toFixed(1) : null).filter((p) => p);
    el("svg:polyline", {points: pts.join(" "), fill: "none", stroke: color, "stroke-width": c.width, "stroke-dasharray": c.dash}, null, svg);
    const item = el("span", {}, null, lg); el("span", {class: "swatch", style: "background:" + color}, null, item);
    el("span", {}, c.label + (c.dash ? " (dashed)" : ""), item);
  });
})();
(function config() {
  const rows = [];
  (function walk(o, p) { for (const k in o) { const v = o[k]; if (v && typeof v === "object" && !Array.isArray(v)) walk(v, p + k + "."); else rows.push([p + k, JSON.stringify(v)]); } })(R.config, "");
  for (const [k, v] of rows) { const tr = el("tr", {}, null, $("config")); el("td", {}, k, tr); el("td", {}, v, tr); }
})();
document.body.setAttribute("data-rendered", "1");
</script>
</body></html>
"""
