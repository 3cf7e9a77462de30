"""One self-contained HTML page of an :class:`~lstm_fn.inspect.analysis.Inspection`: plain
HTML, SVG and JavaScript written here, styles inline, no server and no network.

The activations travel quantised: each unit's values scaled by its largest magnitude to
int8, unit by unit, base64-encoded. Where all of them would not fit :data:`STATE_BUDGET`, an
lstm's page keeps its cell states ``c`` (the units of the 2015 paper) and drops ``h``.
"""

from __future__ import annotations

import base64
import html
import json
import math

import numpy as np

from lstm_fn.inspect.analysis import FEATURES, SATURATION, Inspection

# Bytes of quantised activations a page holds at most (about 4/3 as much once encoded).
STATE_BUDGET = 10_000_000


def quantised(values: np.ndarray) -> dict:
    """``values [N, H]`` as ``{"scale": [H], "data": base64 of int8 [H, N]}`` (unit-major:
    one unit's values are contiguous); ``value ~ data * scale / 127``."""
    scale = np.maximum(np.abs(values).max(0), 1e-12)  # [H]
    levels = np.clip(np.rint(values / scale * 127), -127, 127).astype(np.int8)
    return {"scale": [float(f"{s:.4g}") for s in scale],
            "data": base64.b64encode(np.ascontiguousarray(levels.T).tobytes()).decode("ascii")}


def page_data(result: Inspection, symbols: list[str], header: dict) -> dict:
    """What the page's script reads."""
    parts = list(result.states[0])
    size = len(result.ids) * sum(layer[p].shape[1] for layer in result.states for p in parts)
    if size > STATE_BUDGET and "c" in parts:
        parts = ["c"]
    layers = []
    for states, correlations, saturation in zip(result.states, result.correlations,
                                                result.saturation):
        layers.append({
            "states": {p: quantised(states[p]) for p in parts},
            "correlations": {p: np.round(correlations[p], 3).tolist() for p in parts},
            "saturation": {g: [np.round(left, 4).tolist(), np.round(right, 4).tolist()]
                           for g, (left, right) in saturation.items()}})
    return {"header": header, "symbols": symbols, "ids": result.ids.tolist(),
            "surprisal": np.round(result.surprisal, 3).tolist(),
            "top_ids": result.top_ids.tolist(),
            "top_probs": np.round(result.top_probs, 4).tolist(),
            "features": list(FEATURES), "layers": layers, "parts": parts,
            "dropped": [p for p in result.states[0] if p not in parts],
            "gradient_flow": [float(f"{g:.4g}") for g in result.gradient_flow],
            "saturation_level": SATURATION}


def write_page(result: Inspection, symbols: list[str], header: dict) -> str:
    """The page as text."""
    data = json.dumps(page_data(result, symbols, header), ensure_ascii=True, allow_nan=False)
    # "</" cannot end the script element early once escaped
    data = data.replace("</", "<\\/")
    title = html.escape(f"lstm-fn inspect: {header.get('source', 'text')}")
    return (PAGE.replace("@TITLE@", title).replace("@DATA@", data)
            .replace("@STYLE@", STYLE).replace("@SCRIPT@", SCRIPT))


def mean_bits(result: Inspection) -> float:
    return float(np.mean(result.surprisal)) if len(result.surprisal) else math.nan


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>@TITLE@</title>
<style>@STYLE@</style></head>
<body>
<header id="header"></header>
<section id="surprise"><h2>Surprise</h2><p id="surprise-summary"></p>
<div class="legend">each character coloured by its surprisal (bits): white 0, red 8 or more;
hover for the model's top predictions</div><div class="text" id="surprise-text"></div></section>
<section id="cells"><h2>Cells</h2>
<div class="controls">layer <select id="layer"></select> state <select id="part"></select>
unit <input id="unit" type="number" min="0" value="0"> <span class="hint">(keys j / k: next /
previous unit)</span> <span id="unit-summary"></span></div>
<div class="legend">each character coloured by the unit's activation after reading it: blue
negative, red positive</div><div class="text" id="cell-text"></div>
<h3>Units that follow the text</h3><p class="hint">Correlation of each unit with a feature
computed from the text itself; click a unit to colour the text by it.</p>
<div id="ranking"></div></section>
<section id="gates"><h2>Gates</h2><p id="gate-reading"></p><div id="gate-plots"></div></section>
<section id="flow"><h2>Gradient flow</h2><p id="flow-reading"></p><div id="flow-plot"></div>
</section>
<div id="tip" class="tip" hidden></div>
<script type="application/json" id="data">@DATA@</script>
<script>@SCRIPT@</script>
</body></html>
"""

STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:70em;color:#222;padding:0 1em}
h1{font-size:1.4em;margin:.2em 0} h2{border-bottom:1px solid #ccc;margin-top:1.6em}
.text{font:13px/1.6 ui-monospace,monospace;white-space:pre-wrap;border:1px solid #ddd;
padding:.6em;max-height:28em;overflow:auto;background:#fff}
.text span{cursor:default} .legend,.hint{color:#666;font-size:.9em}
.controls{margin:.5em 0} .tip{position:fixed;background:#fffbe6;border:1px solid #c9b458;
padding:.4em .6em;font:12px ui-monospace,monospace;pointer-events:none;z-index:9}
table.rank{border-collapse:collapse;margin:.3em 0} table.rank td,table.rank th{padding:.1em .6em;
text-align:left;vertical-align:top} a.unit{cursor:pointer;color:#06c;margin-right:.5em}
.plots{display:flex;flex-wrap:wrap;gap:1em} svg text{font:11px system-ui,sans-serif}
dl.head{display:grid;grid-template-columns:max-content auto;gap:.1em 1em;margin:.4em 0}
dl.head dt{color:#666}
"""

SCRIPT = r"""
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const N = D.ids.length, TIP = document.getElementById("tip");
const show = c => c === "\n" ? "\u21b5" : c === " " ? "\u2423" : c === "\t" ? "\u21e5" : c;
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}
function header() {
  const h = D.header, box = document.getElementById("header");
  box.append(el("h1", {}, "What the model does on " + h.source));
  const dl = el("dl", {class: "head"});
  for (const [k, v] of h.rows) { dl.append(el("dt", {}, k)); dl.append(el("dd", {}, v)); }
  box.append(dl);
}
function textSpans(box) {
  const frag = document.createDocumentFragment(), spans = [];
  for (let t = 0; t < N; t++) {
    const s = el("span", {"data-t": t}, D.symbols[D.ids[t]]);
    spans.push(s); frag.append(s);
  }
  box.append(frag);
  return spans;
}
function surprise() {
  const box = document.getElementById("surprise-text"), spans = textSpans(box);
  const bits = D.surprisal;
  let total = 0;
  for (const b of bits) total += b;
  document.getElementById("surprise-summary").textContent =
    `${bits.length.toLocaleString()} characters predicted: ${total.toFixed(0)} bits in all, ` +
    `${(total / bits.length).toFixed(3)} bits (${(total / bits.length * Math.LN2).toFixed(4)} ` +
    `nats) per character`;
  for (let t = 1; t < N; t++) {
    const a = Math.min(bits[t - 1] / 8, 1);
    spans[t].style.backgroundColor = `rgba(220,40,30,${a.toFixed(3)})`;
  }
  box.addEventListener("mousemove", ev => {
    const t = +ev.target.getAttribute("data-t");
    if (!ev.target.hasAttribute("data-t") || t < 1) { TIP.hidden = true; return; }
    const lines = [`read "${show(D.symbols[D.ids[t]])}": ${bits[t - 1].toFixed(2)} bits`,
                   "expected:"];
    D.top_ids[t - 1].forEach((id, k) => lines.push(
      `  "${show(D.symbols[id])}" ${(100 * D.top_probs[t - 1][k]).toFixed(1)}%`));
    TIP.textContent = lines.join("\n");
    TIP.style.whiteSpace = "pre";
    TIP.hidden = false;
    TIP.style.left = (ev.clientX + 14) + "px";
    TIP.style.top = (ev.clientY + 14) + "px";
  });
  box.addEventListener("mouseleave", () => { TIP.hidden = true; });
}
const decoded = {};
function unitValues(layer, part, unit) {
  const key = layer + "/" + part;
  if (!decoded[key]) {
    const raw = atob(D.layers[layer].states[part].data), bytes = new Int8Array(raw.length);
    for (let i = 0; i < raw.length; i++) bytes[i] = (raw.charCodeAt(i) << 24) >> 24;
    decoded[key] = bytes;
  }
  return decoded[key].subarray(unit * N, (unit + 1) * N);
}
let cellSpans = [];
function paint() {
  const layer = +document.getElementById("layer").value, part = document.getElementById("part").value;
  const box = document.getElementById("unit"), units = D.layers[layer].states[part].scale.length;
  const unit = Math.max(0, Math.min(units - 1, +box.value || 0));
  box.value = unit; box.max = units - 1;
  const v = unitValues(layer, part, unit);
  for (let t = 0; t < N; t++) {
    const a = v[t] / 127;
    cellSpans[t].style.backgroundColor = a >= 0 ? `rgba(220,50,40,${a.toFixed(3)})`
                                                : `rgba(40,90,220,${(-a).toFixed(3)})`;
  }
  const r = D.layers[layer].correlations[part][unit];
  const best = r.map((x, f) => [Math.abs(x), f]).sort((a, b) => b[0] - a[0])[0];
  document.getElementById("unit-summary").textContent =
    `layer ${layer}, ${part}[${unit}] of ${units}: follows "${D.features[best[1]]}" most ` +
    `(r = ${r[best[1]].toFixed(2)}); scale ${D.layers[layer].states[part].scale[unit]}`;
}
function choose(layer, part, unit) {
  document.getElementById("layer").value = layer;
  document.getElementById("part").value = part;
  document.getElementById("unit").value = unit;
  paint();
  document.getElementById("cells").scrollIntoView();
}
function ranking() {
  const box = document.getElementById("ranking"), table = el("table", {class: "rank"});
  const head = el("tr"); head.append(el("th", {}, "feature"), el("th", {}, "units (r)"));
  table.append(head);
  D.features.forEach((name, f) => {
    const found = [];
    D.layers.forEach((L, l) => D.parts.forEach(p => L.correlations[p].forEach((r, u) =>
      found.push([Math.abs(r[f]), r[f], l, p, u]))));
    found.sort((a, b) => b[0] - a[0]);
    const row = el("tr"), cell = el("td");
    row.append(el("td", {}, name));
    for (const [, r, l, p, u] of found.slice(0, 6)) {
      const a = el("a", {class: "unit", "data-layer": l, "data-part": p, "data-unit": u},
                   `L${l} ${p}[${u}] ${r.toFixed(2)}`);
      a.addEventListener("click", () => choose(l, p, u));
      cell.append(a);
    }
    row.append(cell); table.append(row);
  });
  box.append(table);
}
function cells() {
  const layer = document.getElementById("layer"), part = document.getElementById("part");
  D.layers.forEach((_, l) => layer.append(el("option", {value: l}, String(l))));
  D.parts.forEach(p => part.append(el("option", {value: p}, p)));
  cellSpans = textSpans(document.getElementById("cell-text"));
  for (const c of [layer, part, document.getElementById("unit")]) c.addEventListener("input", paint);
  document.addEventListener("keydown", ev => {
    if (ev.target.tagName === "INPUT" || ev.target.tagName === "SELECT") return;
    const box = document.getElementById("unit");
    if (ev.key === "j") { box.value = +box.value + 1; paint(); }
    if (ev.key === "k") { box.value = +box.value - 1; paint(); }
  });
  ranking();
  paint();
}
function svgPlot(width, height, draw) {
  const ns = "http://www.w3.org/2000/svg", svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", width); svg.setAttribute("height", height);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e); return e;
  };
  draw(add);
  return svg;
}
const COLORS = {i: "#2a9d3f", f: "#d1495b", o: "#2d6fd6", r: "#8a4fd1", z: "#e08a1e"};
function gates() {
  const box = document.getElementById("gate-plots"), reading = document.getElementById("gate-reading");
  const names = Object.keys(D.layers[0].saturation);
  if (!names.length) {
    reading.textContent = "This cell has no gates (a plain rnn: h' = tanh(a)).";
    return;
  }
  const lo = D.saturation_level, hi = (1 - lo).toFixed(1);
  reading.textContent = `Each point is a unit of a gate: x, the share of characters at which ` +
    `it is nearly shut (< ${lo}); y, nearly open (> ${hi}). Karpathy, Johnson and Fei-Fei ` +
    `(2015) read such plots as: forget gates far up are cells that remember for long, and ` +
    `few gates of a trained LSTM sit near the middle all the time.`;
  box.className = "plots";
  D.layers.forEach((L, l) => box.append(svgPlot(280, 300, add => {
    const x0 = 40, y0 = 260, s = 220;
    add("rect", {x: x0, y: y0 - s, width: s, height: s, fill: "none", stroke: "#999"});
    add("line", {x1: x0, y1: y0 - s, x2: x0 + s, y2: y0, stroke: "#ddd"});
    add("text", {x: x0 + s / 2, y: y0 + 30, "text-anchor": "middle"}, "fraction left-saturated");
    add("text", {x: 12, y: y0 - s / 2, transform: `rotate(-90 12 ${y0 - s / 2})`,
                 "text-anchor": "middle"}, "fraction right-saturated");
    add("text", {x: x0 + s / 2, y: 16, "text-anchor": "middle"}, `layer ${l}`);
    for (const [k, v] of [[0, "0"], [1, "1"]]) {
      add("text", {x: x0 + k * s, y: y0 + 14, "text-anchor": "middle"}, v);
      add("text", {x: x0 - 6, y: y0 - k * s + 4, "text-anchor": "end"}, v);
    }
    Object.entries(L.saturation).forEach(([g, [left, right]], k) => {
      left.forEach((x, u) => add("circle", {cx: x0 + x * s, cy: y0 - right[u] * s, r: 2.2,
        fill: COLORS[g] || "#555", "fill-opacity": .6}));
      add("text", {x: x0 + s - 8, y: y0 - s + 14 + 13 * k, "text-anchor": "end",
                   fill: COLORS[g] || "#555"}, g);
    });
  })));
}
function flow() {
  const g = D.gradient_flow, T = g.length, box = document.getElementById("flow-plot");
  const logs = g.map(v => Math.log10(Math.max(v, 1e-30)));
  const top = Math.ceil(Math.max(...logs)), bottom = Math.floor(Math.min(...logs));
  document.getElementById("flow-reading").textContent =
    `||dL_T/dh_t|| of the top layer for t = T..1 (T = ${T}), the loss at the last character of ` +
    `each window, averaged over the windows of the text: how far back a character can still ` +
    `move the prediction. ${T} steps back it is ${(g[T - 1] / g[0]).toExponential(1)} of ` +
    `its value at the last step.`;
  box.append(svgPlot(620, 280, add => {
    const x0 = 60, y0 = 240, w = 540, h = 210, span = Math.max(top - bottom, 1);
    add("rect", {x: x0, y: y0 - h, width: w, height: h, fill: "none", stroke: "#999"});
    for (let e = bottom; e <= top; e++) {
      const y = y0 - (e - bottom) / span * h;
      add("line", {x1: x0, y1: y, x2: x0 + w, y2: y, stroke: "#eee"});
      add("text", {x: x0 - 6, y: y + 4, "text-anchor": "end"}, `1e${e}`);
    }
    const pts = logs.map((v, k) => `${x0 + k / Math.max(T - 1, 1) * w},${y0 - (v - bottom) / span * h}`);
    add("polyline", {points: pts.join(" "), fill: "none", stroke: "#d1495b", "stroke-width": 2});
    add("text", {x: x0 + w / 2, y: y0 + 30, "text-anchor": "middle"}, "steps back (t = T..1)");
    add("text", {x: x0, y: y0 + 14, "text-anchor": "middle"}, "0");
    add("text", {x: x0 + w, y: y0 + 14, "text-anchor": "middle"}, String(T - 1));
  }));
}
header(); surprise(); cells(); gates(); flow();
document.body.setAttribute("data-ready", "1");
"""
