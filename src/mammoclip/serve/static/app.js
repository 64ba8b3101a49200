// mammoclip serve viewer: one image in, zero-shot bars, FActOR heatmap overlay, detection boxes.
// No framework, no CDN: everything is served by the package itself.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { info: null, heatmaps: {}, size: null };

function headers(extra) {
  const h = Object.assign({}, extra || {});
  const token = $("token").value || sessionStorage.getItem("mammoclip-token") || "";
  if (token) { h["Authorization"] = "Bearer " + token; sessionStorage.setItem("mammoclip-token", token); }
  return h;
}

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function api(path, file) {
  const type = file && file.type ? file.type : "application/octet-stream";
  const response = await fetch(path, { method: file ? "POST" : "GET", body: file || undefined,
                                       headers: headers(file ? { "Content-Type": type } : {}) });
  const body = await response.json();
  if (!response.ok) {
    const err = body.error || { code: "HTTP_" + response.status, message: response.statusText };
    throw new Error(err.code + ": " + err.message);
  }
  return body;
}

async function loadInfo() {
  const health = await (await fetch("/healthz")).json();
  $("token-row").hidden = !health.auth;
  try {
    state.info = await api("/v1/info");
  } catch (e) {
    $("model-info").textContent = health.auth ? "enter the token, then pick an image" : String(e.message);
    return;
  }
  const i = state.info;
  const loaded = Object.entries(i.loaded).filter(([, v]) => v).map(([k]) => k).join(", ");
  $("model-info").textContent = `${i.model} · input ${i.input_size[0]}×${i.input_size[1]} · ${loaded}`;
}

function showProbabilities(result) {
  const root = $("probs");
  root.replaceChildren();
  for (const task of result.tasks) {
    const block = document.createElement("div");
    block.className = "task";
    block.dataset.task = task.task;
    const title = document.createElement("h3");
    title.textContent = task.task;
    block.appendChild(title);
    for (const cls of task.classes) {
      const row = document.createElement("div");
      row.className = "bar" + (cls.name === task.prediction ? " top" : "");
      row.dataset.label = cls.name;
      row.title = "prompts: " + cls.prompts.join(" | ");
      const name = document.createElement("span");
      name.textContent = cls.name;
      const track = document.createElement("div");
      track.className = "track";
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.width = (100 * cls.probability).toFixed(1) + "%";
      track.appendChild(fill);
      const value = document.createElement("span");
      value.className = "value";
      value.textContent = cls.probability.toFixed(3);
      row.append(name, track, value);
      block.appendChild(row);
    }
    root.appendChild(block);
  }
}

// A heatmap (grayscale PNG, processed grid) drawn through a blue-to-red ramp with the chosen opacity.
function drawHeat() {
  const canvas = $("heat");
  const name = $("attribute").value;
  const img = state.heatmaps[name];
  const ctx = canvas.getContext("2d");
  if (!img || !state.size) { ctx.clearRect(0, 0, canvas.width, canvas.height); return; }
  canvas.width = state.size[1];
  canvas.height = state.size[0];
  ctx.drawImage(img, 0, 0, canvas.width, canvas.height);
  const data = ctx.getImageData(0, 0, canvas.width, canvas.height);
  const alpha = Number($("opacity").value) / 100;
  for (let p = 0; p < data.data.length; p += 4) {
    const v = data.data[p] / 255;
    data.data[p] = Math.round(255 * Math.min(1, 2 * v));
    data.data[p + 1] = Math.round(255 * (1 - Math.abs(2 * v - 1)));
    data.data[p + 2] = Math.round(255 * Math.min(1, 2 * (1 - v)));
    data.data[p + 3] = Math.round(255 * alpha * v);
  }
  ctx.putImageData(data, 0, 0);
  canvas.dataset.attribute = name;
}

function showExplain(result) {
  const select = $("attribute");
  select.replaceChildren();
  state.heatmaps = {};
  const loads = result.attributes.map((item) => new Promise((resolve) => {
    const option = document.createElement("option");
    option.value = item.attribute;
    option.textContent = `${item.attribute} (${item.score.toFixed(3)})`;
    select.appendChild(option);
    const img = new Image();
    img.onload = () => resolve();
    img.onerror = () => resolve();
    img.src = "data:image/png;base64," + item.heatmap_png;
    state.heatmaps[item.attribute] = img;
  }));
  $("explain-controls").hidden = false;
  return Promise.all(loads).then(drawHeat);
}

function showBoxes(result) {
  const svg = $("boxes");
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${state.size[1]} ${state.size[0]}`);
  svg.setAttribute("preserveAspectRatio", "none");
  const body = $("detections").querySelector("tbody");
  body.replaceChildren();
  for (const b of result.boxes) {
    const [x0, y0, x1, y1] = b.box.processed;
    const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
    Object.entries({ x: x0, y: y0, width: x1 - x0, height: y1 - y0, fill: "none", stroke: "#ffd43b",
                     "stroke-width": 1.5 }).forEach(([k, v]) => rect.setAttribute(k, v));
    svg.appendChild(rect);
    const row = body.insertRow();
    [b.class, b.score.toFixed(3), b.box.processed.join(", "), b.box.original.join(", ")]
      .forEach((t) => { row.insertCell().textContent = t; });
  }
  $("boxes-row").hidden = $("det-title").hidden = $("detections").hidden = false;
  svg.style.display = $("show-boxes").checked ? "block" : "none";
}

async function analyse(file) {
  if (!state.info) await loadInfo();
  setStatus("Analysing " + (file.name ? "the image" : "") + "…");
  document.body.dataset.state = "busy";
  try {
    const zs = await api("/v1/zeroshot?return_image=true", file);
    state.size = zs.image.processed_size;
    const img = $("mammogram");
    await new Promise((resolve) => { img.onload = resolve; img.src = "data:image/png;base64," + zs.image.processed_png; });
    showProbabilities(zs);
    const loaded = state.info ? state.info.loaded : {};
    if (loaded.explain) await showExplain(await api("/v1/explain", file));
    if (loaded.detect) showBoxes(await api("/v1/detect", file));
    const [h, w] = zs.image.original_size;
    setStatus(`Done: original ${h}×${w}, processed ${state.size[0]}×${state.size[1]}.`);
    document.body.dataset.state = "done";
  } catch (e) {
    setStatus(String(e.message), true);
    document.body.dataset.state = "error";
  }
}

window.addEventListener("DOMContentLoaded", () => {
  loadInfo();
  $("file").addEventListener("change", (ev) => { if (ev.target.files[0]) analyse(ev.target.files[0]); });
  $("token").addEventListener("change", loadInfo);
  $("attribute").addEventListener("change", drawHeat);
  $("opacity").addEventListener("input", drawHeat);
  $("show-boxes").addEventListener("change", () => {
    $("boxes").style.display = $("show-boxes").checked ? "block" : "none";
  });
  const drop = $("drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files[0]) analyse(ev.dataTransfer.files[0]);
  });
});
