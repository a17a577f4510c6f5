"""The explorer page (--html): one self-contained HTML file per picture, to look inside the model.

A reader sees the explanation over the picture, with a layer slider that shows it build up
through layers 1..L and a choice among the head fusions the run computed; clicks any patch, or
the class token, to see where that token attends at the chosen layer -- each head, and the heads
fused -- and reads the values on hover; and finds the top-5 classes and, after --evaluate, the
faithfulness scores.

Self-contained: the picture, the numbers and the script are in the file, and its Content-Security-
Policy forbids every request, so it works from disk, offline, in any current browser. To keep a
page near 2 MB the numbers are stored at 8 bits: each attention row (one layer, head and token)
as 0..255 times its own largest entry / 255, and the maps, which are in [0, 1], as 0..255 / 255.
A value shown is within half a step of the model's: row maximum / 510 for attention.

numpy and Pillow only (it runs in a writer thread: no torch).
"""
import base64
import html
import io
import json

import numpy as np

from .architectures import architecture
from .curves import curves_svg
from .labels import are_features, short_name, top

SIDE = 448  # the picture's longer side on the page, in pixels


def quantised_rows(attentions):
    """(L, H, N, N) attention in [0, 1] -> ((L, H, N, N) uint8, (L, H, N) float32 step): each row
    stored as round(value / step), step = its largest entry / 255."""
    step = np.asarray(attentions, np.float32).max(axis=-1) / 255
    step = np.where(step > 0, step, np.float32(1)).astype(np.float32)  # an all-zero row stays 0
    return np.rint(attentions / step[..., None]).astype(np.uint8), step


def _b64(data):
    return base64.b64encode(bytes(data)).decode("ascii")


def _jpeg(picture):
    """(H, W, 3) uint8 -> the JPEG bytes of the picture at SIDE pixels on its longer side."""
    from PIL import Image
    image = Image.fromarray(picture)
    scale = SIDE / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                         Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=88)
    return buffer.getvalue()


def page_data(result):
    """A PictureResult with ``attentions`` and ``layers`` -> the page's numbers, JSON-ready."""
    codes, step = quantised_rows(result.attentions)
    L, H, N, _ = codes.shape
    grid = next(iter(result.layers.values()))[0].shape[-1]  # G: the maps' side (prefix tokens: N - G*G)
    method = result.method
    return {
        "picture": _b64(_jpeg(result.picture)),
        "file": result.path.name,
        "method": method.title + (f" for class {result.category}, {short_name(result.category)}"
                                  if method.uses_gradient else ""),
        "model": architecture(result.model).title, "layers": L, "heads": H, "tokens": N,
        "prefix": N - grid * grid, "prefixNames": list(architecture(result.model).token_names), "grid": grid,
        "fusions": list(result.layers),
        "by_layer": {f: _b64(np.rint(np.asarray(by_layer, np.float32) * 255).astype(np.uint8))
                     for f, (by_layer, _) in result.layers.items()},
        "attention": _b64(codes), "step": _b64(step.astype("<f4")),
        "top5": top(result.probabilities), "features": are_features(),
        "faithfulness": result.faithfulness,
        "curves": curves_svg(result.faithfulness, short_name(result.category)) if result.faithfulness else None,
        "gradient": method.uses_gradient,
    }


def explorer_page(result):
    """A PictureResult with ``attentions`` and ``layers`` -> the explorer page, as text."""
    data = json.dumps(page_data(result), separators=(",", ":")).replace("</", "<\\/")  # no "</script>"
    before, after = PAGE.split("DATA", 1)
    title = html.escape(f"{result.path.name}: where {architecture(result.model).title} looks")
    return before.replace("TITLE", title, 1) + data + after


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy"
      content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'">
<title>TITLE</title>
<style>
  body { font: 15px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1200px; }
  h1 { font-size: 1.3em; margin: 0 0 .2em; }
  h2 { font-size: 1.05em; margin: .2em 0 .4em; }
  .sub, .note, .hint { color: #555; }
  .note { font-size: .85em; }
  .row { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
  .row > section { max-width: 470px; }
  .heads { display: grid; grid-template-columns: repeat(2, max-content); gap: .5em 1em; }
  figure { margin: 0; }
  figcaption { font-size: .85em; color: #444; }
  canvas { display: block; border: 1px solid #ccc; }
  #main { cursor: crosshair; }
  .controls { margin: .6em 0; display: flex; gap: 1.2em; align-items: center; flex-wrap: wrap; }
  #readout { font-family: ui-monospace, monospace; font-size: .85em; min-height: 2.8em; }
  table { border-collapse: collapse; }
  td, th { padding: .15em .7em; text-align: right; border-bottom: 1px solid #ddd; }
  td:last-child, th:last-child { text-align: left; }
</style>
</head>
<body>
<h1 id="title"></h1>
<p class="sub" id="method"></p>
<div class="row">
  <section>
    <h2>The explanation through layers 1..<span id="layer-label"></span></h2>
    <canvas id="main"></canvas>
    <div class="controls">
      <label>Layer <input type="range" id="layer" min="1" step="1"> <output id="layer-value"></output></label>
      <label>Head fusion <select id="fusion"></select></label>
      <button id="cls" type="button">Class token</button>
      <label><input type="checkbox" id="colour"> photo in colour</label>
    </div>
    <p class="hint" id="main-says"></p>
    <p class="hint">Click a patch to see where it attends; the button picks the class token.</p>
  </section>
  <section>
    <h2>Where <span id="token-label"></span> attends in layer <span id="head-layer"></span></h2>
    <p class="hint" id="heads-say"></p>
    <div class="heads" id="heads"></div>
    <p id="to-cls" style="white-space: pre-line"></p>
    <p id="readout">Hover over a panel to read its values.</p>
  </section>
</div>
<section><h2 id="top5-title">Top-5 classes</h2><table id="top5"></table></section>
<section id="faithfulness" hidden><h2>Faithfulness (perturbation test)</h2>
  <p class="hint">Probability of the class as the most (positive) or least (negative) relevant
  patches are removed: lower positive and higher negative areas mean a more faithful map.</p>
  <table id="auc"></table><div id="curves"></div></section>
<p class="note">Colours: each panel scaled to its own maximum, dark blue 0 to dark red, over a
grey copy of the photo (so that red means relevance only) unless "photo in colour" is ticked. The
chosen patch is outlined in white in every panel. Numbers are stored at 8 bits: an attention value
shown is within half a step (its row's largest entry / 510) of the model's, a map value within
1/510.</p>
<script>
"use strict";
const D = DATA;
const bytes = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
const L = D.layers, H = D.heads, N = D.tokens, G = D.grid, P0 = D.prefix;  // P0: the tokens before the patches
const codes = bytes(D.attention), step = new Float32Array(bytes(D.step).buffer);
const maps = Object.fromEntries(D.fusions.map((f) => [f, bytes(D.by_layer[f])]));
const state = { layer: L, fusion: D.fusions[0], token: 0, hover: null, colour: false };  // hover: [panel, row, column]
const $ = (id) => document.getElementById(id);

// attention of token i to token j in layer l (1-based), head h
const value = (l, h, i, j) => { const row = ((l - 1) * H + h) * N + i; return codes[row * N + j] * step[row]; };
const FUSE = { mean: (v) => v.reduce((a, b) => a + b) / v.length, min: (v) => Math.min(...v), max: (v) => Math.max(...v) };
const fused = (l, i, j) => FUSE[state.fusion]([...Array(H).keys()].map((h) => value(l, h, i, j)));
const jet = (x) => [3, 2, 1].map((c) => Math.round(255 * Math.min(1, Math.max(0, 1.5 - Math.abs(4 * x - c)))));
const tokenName = (t) => t === 0 ? "the class token" : `patch (${Math.floor((t - P0) / G)}, ${(t - P0) % G})`;

const picture = new Image();
const width = () => Math.round(picture.width), height = () => Math.round(picture.height);

function draw(canvas, grid, smooth) {  // grid: G*G values, drawn scaled to their maximum
  const ctx = canvas.getContext("2d");
  ctx.globalAlpha = 1;
  ctx.filter = state.colour ? "none" : "grayscale(1)";
  ctx.drawImage(picture, 0, 0, canvas.width, canvas.height);
  ctx.filter = "none";
  const peak = Math.max(...grid) || 1;
  const cells = document.createElement("canvas");
  cells.width = cells.height = G;
  const image = cells.getContext("2d").createImageData(G, G);
  grid.forEach((x, k) => image.data.set([...jet(x / peak), 255], 4 * k));
  cells.getContext("2d").putImageData(image, 0, 0);
  ctx.globalAlpha = 0.5;
  ctx.imageSmoothingEnabled = smooth;
  ctx.drawImage(cells, 0, 0, canvas.width, canvas.height);
  ctx.globalAlpha = 1;
  if (state.token >= P0) {  // the chosen patch, outlined
    const w = canvas.width / G, h = canvas.height / G;
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 2;
    ctx.strokeRect(((state.token - P0) % G) * w, Math.floor((state.token - P0) / G) * h, w, h);
  }
}

function patchAt(canvas, event) {  // -> [row, column] of the patch under the mouse
  const box = canvas.getBoundingClientRect();
  const clamp = (x) => Math.min(G - 1, Math.max(0, Math.floor(x * G)));
  return [clamp((event.clientY - box.top) / box.height), clamp((event.clientX - box.left) / box.width)];
}

const panels = [...Array(H).keys()].map((h) => ({ name: `head ${h + 1}`, row: (l, i, j) => value(l, h, i, j) }))
  .concat([{ name: "fused", row: fused }]);

function render() {
  const { layer, fusion, token } = state;
  $("layer-label").textContent = layer;
  $("layer-value").textContent = `${layer} of ${L}`;
  $("head-layer").textContent = layer;
  $("token-label").textContent = tokenName(token);
  const map = maps[fusion].subarray((layer - 1) * G * G, layer * G * G);
  const main = $("main");
  draw(main, Array.from(map, (q) => q / 255), true);
  panels.forEach((panel, p) => {
    panel.caption.textContent = p < H ? panel.name : `fused (${fusion})`;
    draw(panel.canvas, [...Array(G * G).keys()].map((k) => panel.row(layer, token, k + P0)), false);
  });
  // the prefix tokens are in no map: their attention is listed apart, the class token first
  $("to-cls").textContent = D.prefixNames.map((name, t) => `Attention to ${t ? name : "the class token"}: ` +
    panels.map((panel, p) => `${p < H ? panel.name : fusion} ${panel.row(layer, token, t).toFixed(4)}`).join(", ")).join("\\n");
  showReadout();
}

function showReadout() {  // the values under the mouse, for the layer, token and fusion chosen now
  if (!state.hover) return;
  const [r, c] = state.hover, j = P0 + r * G + c;
  const values = panels.map((panel, p) => `${p < H ? panel.name : state.fusion} ${panel.row(state.layer, state.token, j).toFixed(4)}`);
  $("readout").textContent = `layer ${state.layer}, ${tokenName(state.token)} \\u2192 patch (${r}, ${c}): ${values.join(", ")}`;
}

function readout(event) {
  state.hover = patchAt(event.target, event);
  showReadout();
}

picture.onload = () => {
  const main = $("main");
  main.width = width(); main.height = height();
  const columns = H > 3 ? 3 : 2;  // DeiT-small's and -base's 6 and 12 heads, smaller
  $("heads").style.gridTemplateColumns = `repeat(${columns}, max-content)`;
  const small = Math.round(width() / columns), smallHeight = Math.round(height() / columns);
  for (const panel of panels) {
    const figure = document.createElement("figure");
    panel.canvas = document.createElement("canvas");
    panel.canvas.width = small; panel.canvas.height = smallHeight;
    panel.canvas.addEventListener("mousemove", readout);
    panel.caption = document.createElement("figcaption");
    figure.append(panel.canvas, panel.caption);
    $("heads").append(figure);
  }
  main.addEventListener("click", (event) => { const [r, c] = patchAt(main, event); state.token = P0 + r * G + c; render(); });
  $("cls").addEventListener("click", () => { state.token = 0; render(); });
  $("layer").addEventListener("input", (event) => { state.layer = Number(event.target.value); render(); });
  $("fusion").addEventListener("change", (event) => { state.fusion = event.target.value; render(); });
  $("colour").addEventListener("change", (event) => { state.colour = event.target.checked; render(); });
  render();
  document.body.dataset.ready = "yes";
};

$("title").textContent = D.file;
$("method").textContent = `${D.method} \\u00b7 ${D.model} \\u00b7 ${L} layers, ${H} heads, ${G}\\u00d7${G} patches`;
$("main-says").textContent = D.gradient
  ? "The map: each layer's attention weighted by the gradient of the class's logit, rolled out through layers 1..l."
  : "The map: each layer's attention, heads fused, rolled out through layers 1..l.";
$("heads-say").textContent = "Raw attention, as the model computed it" +
  (D.gradient ? " (not weighted by the gradient, unlike the map)." : ".");
$("layer").max = L; $("layer").value = L;
for (const f of D.fusions) $("fusion").append(new Option(f, f));
$("top5").innerHTML = D.features ? "<tr><th>value</th><th>feature</th><th>name</th></tr>"
  : "<tr><th>p</th><th>class</th><th>name</th></tr>";
if (D.features) $("top5-title").textContent = "The class token's largest features (no classifier)";
for (const [p, index, name] of D.top5) {
  const row = $("top5").insertRow();
  for (const text of [p.toFixed(3), index, name]) row.insertCell().textContent = text;
}
if (D.faithfulness) {
  $("faithfulness").hidden = false;
  $("auc").innerHTML = "<tr><th>positive AUC</th><th>negative AUC</th><th>fusion</th></tr>";
  for (const [f, s] of Object.entries(D.faithfulness)) {
    const row = $("auc").insertRow();
    for (const text of [s.positive_auc.toFixed(4), s.negative_auc.toFixed(4), f]) row.insertCell().textContent = text;
  }
  $("curves").innerHTML = D.curves;  // drawn by curves.py, as in the report
}
picture.src = "data:image/jpeg;base64," + D.picture;
</script>
</body>
</html>
"""
