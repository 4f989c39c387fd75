// Delineo viewer: the browser side. NiiVue (bundled, BSD-2) draws the volume, the mask as its
// editable drawing layer and the explanation as a heat-map overlay; everything else is plain DOM
// over the JSON API of delineo.serve.app. No framework, no network access beyond this server.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = {
  info: null, study: null, masks: [], mask: null, version: null, labels: [], hidden: new Set(),
  heat: null, runStarted: {}, timings: {}, dirty: false, seenJobs: new Set(),
};
const nv = new niivue.Niivue({
  backColor: [0.08, 0.09, 0.11, 1], show3Dcrosshair: true, isColorbar: true, crosshairWidth: 0.5,
  multiplanarShowRender: 2, dragMode: 1, loadingText: "",
});
window.delineo = { nv, state };

function user() { return $("#user").value.trim(); }

async function api(path, opts = {}) {
  const headers = Object.assign({ "X-Delineo-User": user() }, opts.headers || {});
  if (opts.json !== undefined) { headers["Content-Type"] = "application/json"; opts.body = JSON.stringify(opts.json); }
  const res = await fetch(path, Object.assign({}, opts, { headers, credentials: "same-origin" }));
  if (!res.ok) {
    let msg = res.statusText;
    try { msg = (await res.json()).detail || msg; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  const type = res.headers.get("content-type") || "";
  return type.includes("json") ? res.json() : res;
}

function status(text, isError = false) {
  const el = $("#status");
  el.textContent = text;
  el.className = isError ? "error" : "muted";
}

function guard(fn) {
  return async (...args) => { try { await fn(...args); } catch (e) { status(e.message, true); } };
}

// ------------------------------------------------------------------ start
async function start() {
  $("#user").value = localStorage.getItem("delineo-user") || "";
  $("#user").addEventListener("change", () => localStorage.setItem("delineo-user", user()));
  await nv.attachToCanvas($("#gl"));
  nv.setSliceType(nv.sliceTypeMultiplanar);
  nv.onLocationChange = (d) => { if (d && d.string) $("#status").textContent = d.string; };
  state.info = await api("/api/info");
  if (!$("#user").value) $("#user").value = state.info.user;
  const models = $("#model");
  models.innerHTML = "";
  for (const m of state.info.models) {
    const o = new Option(m.name + (m.error ? " (unusable)" : ""), m.id);
    o.disabled = !!m.error;
    models.add(o);
  }
  if (!state.info.models.length) models.add(new Option("no models in --models", ""));
  for (const m of state.info.explain_methods) $("#explain-method").add(new Option(m, m));
  $("#explain-method").value = state.info.explain_methods.includes("saliency") ? "saliency" : state.info.explain_methods[0];
  wire();
  await refreshStudies();
  listenJobs();
  document.body.dataset.ready = "1";
}

function wire() {
  $("#file").addEventListener("change", guard(async (e) => upload([...e.target.files])));
  $("#folder").addEventListener("change", guard(async (e) => upload([...e.target.files])));
  $("#series-open").addEventListener("click", guard(async () => {
    const s = await api(`/api/studies/${state.study.id}/series`, { method: "POST", json: { uid: $("#series").value } });
    await openStudy(s);
  }));
  $("#run").addEventListener("click", guard(runModel));
  $("#explain").addEventListener("click", guard(() => explain(null)));
  $("#save").addEventListener("click", guard(saveCorrection));
  $("#approve").addEventListener("click", guard(() => setStatus("approved")));
  $("#reject").addEventListener("click", guard(() => setStatus("rejected")));
  document.querySelectorAll("[data-view]").forEach((b) => b.addEventListener("click", () => setView(b.dataset.view)));
  $("#window").addEventListener("change", () => applyWindow($("#window").value));
  $("#opacity").addEventListener("input", () => { if (!state.contour) nv.setDrawOpacity(+$("#opacity").value); });
  $("#outline").addEventListener("change", guard(showContours));
  $("#export-modality").addEventListener("change", () => updateReview());
  $("#heat-visible").addEventListener("change", () => {
    if (state.heat) { state.heat.opacity = $("#heat-visible").checked ? 0.6 : 0; nv.updateGLVolume(); }
  });
  $("#tool-nav").addEventListener("click", () => tool("nav"));
  $("#tool-brush").addEventListener("click", () => tool("brush"));
  $("#tool-eraser").addEventListener("click", () => tool("eraser"));
  $("#undo").addEventListener("click", () => { nv.drawUndo(); state.dirty = true; updateReview(); });
  $("#pen").addEventListener("change", () => { nv.opts.penSize = +$("#pen").value; });
  $("#pen-label").addEventListener("change", () => { if (nv.opts.drawingEnabled && nv.opts.penValue > 0) tool("brush"); });
  $("#gl").addEventListener("pointerup", () => { if (nv.opts.drawingEnabled) { state.dirty = true; updateReview(); } });
  for (const a of document.querySelectorAll("[data-format]")) {
    a.addEventListener("click", () => { $("#export-state").textContent = `exporting ${a.dataset.format}...`; });
  }
}

// ------------------------------------------------------------------ studies
async function upload(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append("files", f, f.webkitRelativePath || f.name);
  $("#upload-state").textContent = `uploading ${files.length} file(s)...`;
  try {
    const study = await api("/api/studies", { method: "POST", body: form });
    $("#upload-state").textContent = "";
    await refreshStudies();
    await openStudy(study);
  } catch (e) {
    $("#upload-state").textContent = "";
    throw e;
  } finally {
    $("#file").value = ""; $("#folder").value = "";
  }
}

async function refreshStudies() {
  const list = await api("/api/studies");
  const ul = $("#studies");
  ul.innerHTML = "";
  for (const s of list) {
    const li = document.createElement("li");
    li.textContent = `${s.name} · ${s.modality || "?"}${s.status === "pick-series" ? " · choose series" : ""}`;
    li.dataset.id = s.id;
    if (state.study && s.id === state.study.id) li.className = "sel";
    li.addEventListener("click", guard(async () => openStudy(await api(`/api/studies/${s.id}`))));
    ul.appendChild(li);
  }
}

async function openStudy(study) {
  state.study = study; state.mask = null; state.version = null; state.heat = null; state.contour = null;
  state.dirty = false;
  await refreshStudies();
  const pick = $("#series-pick");
  pick.hidden = study.status !== "pick-series";
  if (study.status === "pick-series") {
    const sel = $("#series"); sel.innerHTML = "";
    for (const s of study.series) sel.add(new Option(`#${s.number ?? "?"} ${s.modality} ${s.description || ""} (${s.slices})`, s.uid));
    status("Choose a series to open.");
    return;
  }
  const t0 = performance.now();
  await nv.loadVolumes([{ url: `/api/studies/${study.id}/image.nii.gz`, name: "image.nii.gz", colormap: "gray" }]);
  nv.volumes[0].colorbarVisible = false;
  const sel = $("#window"); sel.innerHTML = "";
  for (const k of Object.keys(study.windows)) sel.add(new Option(k, k));
  sel.value = study.window; applyWindow(study.window);
  nv.opts.penSize = +$("#pen").value;
  state.timings.imageLoad = (performance.now() - t0) / 1000;
  $("#run").disabled = !$("#model").value;
  status(`${study.name}: ${study.modality}${study.modality_guessed ? " (guessed)" : ""}, ${study.shape.join("×")} voxels, ` +
         `${study.spacing.join("×")} mm`);
  await refreshMasks(true);
}

function applyWindow(name) {
  if (!state.study || !nv.volumes.length) return;
  const [lo, hi] = state.study.windows[name];
  nv.volumes[0].cal_min = lo; nv.volumes[0].cal_max = hi;
  nv.updateGLVolume();
}

function setView(view) {
  const t = { axial: nv.sliceTypeAxial, coronal: nv.sliceTypeCoronal, sagittal: nv.sliceTypeSagittal,
              multi: nv.sliceTypeMultiplanar, render: nv.sliceTypeRender }[view];
  nv.setSliceType(t);
  document.querySelectorAll("[data-view]").forEach((b) => b.classList.toggle("on", b.dataset.view === view));
}

// ------------------------------------------------------------------ masks, labels, review
async function refreshMasks(loadLatest) {
  state.masks = await api(`/api/studies/${state.study.id}/masks`);
  if (loadLatest && state.masks.length) {
    await showMask(state.masks[state.masks.length - 1]);
  } else if (!state.masks.length) {
    nv.closeDrawing && nv.closeDrawing();
    state.labels = []; renderLabels(); renderStructures([]); updateReview();
  }
}

async function showMask(mask, version) {
  state.mask = mask;
  state.version = version || mask.versions[mask.versions.length - 1].version;
  const model = state.info.models.find((m) => m.id === mask.model.id);
  const colours = {};
  if (model) for (const l of model.labels) colours[l.value] = l.color;
  state.labels = Object.entries(mask.model.labels).map(([v, n]) => ({ value: +v, name: n, color: colours[v] || [255, 0, 0] }));
  await nv.loadDrawingFromUrl(`/api/studies/${state.study.id}/masks/${mask.id}/versions/${state.version}/mask.nii.gz`);
  state.dirty = false;
  renderLabels(); await showContours(); updateReview();
  await refreshStructures();
  document.body.dataset.maskVersion = `${mask.id}:${state.version}`;
}

function applyLut() {
  const n = Math.max(2, ...state.labels.map((l) => l.value + 1));
  const R = new Array(n).fill(0), G = new Array(n).fill(0), B = new Array(n).fill(0), A = new Array(n).fill(0);
  const names = new Array(n).fill("");
  for (const l of state.labels) {
    [R[l.value], G[l.value], B[l.value]] = l.color;
    A[l.value] = state.hidden.has(l.value) ? 0 : 255;
    names[l.value] = l.name;
  }
  nv.setDrawColormap({ R, G, B, A, labels: names });
  if (state.contour) state.contour.setColormapLabel({ R, G, B, A, labels: names });
  nv.updateGLVolume();
}

// "contours only": the drawing layer (the editable filled mask) is hidden and the server's
// contour voxels of the shown version are overlaid with the same label colours
async function showContours() {
  if (state.contour) { nv.removeVolume(state.contour); state.contour = null; }
  const on = $("#outline").checked && state.mask;
  nv.setDrawOpacity(on ? 0 : +$("#opacity").value);
  if (on) {
    await nv.addVolumeFromUrl({ url: `/api/studies/${state.study.id}/masks/${state.mask.id}/versions/${state.version}/contour.nii.gz`,
      name: "contour.nii.gz" });
    state.contour = nv.volumes.find((v) => v.name === "contour.nii.gz") || nv.volumes[nv.volumes.length - 1];
    state.contour.colorbarVisible = false;
    state.contour.opacity = 1;
  }
  applyLut();
}

function renderLabels() {
  const body = $("#labels tbody"); body.innerHTML = "";
  const pen = $("#pen-label"); pen.innerHTML = "";
  const ex = $("#explain-label"); ex.innerHTML = ""; ex.add(new Option("all labels", "all"));
  for (const l of state.labels) {
    const tr = document.createElement("tr");
    const hex = "#" + l.color.map((c) => c.toString(16).padStart(2, "0")).join("");
    tr.innerHTML = `<td><input type="checkbox" ${state.hidden.has(l.value) ? "" : "checked"} data-label="${l.value}"></td>` +
      `<td><input type="color" value="${hex}" data-colour="${l.value}"></td><td>${l.value}</td><td></td>`;
    tr.lastChild.textContent = l.name;
    body.appendChild(tr);
    pen.add(new Option(`${l.value} ${l.name}`, l.value));
    ex.add(new Option(l.name, l.value));
  }
  body.querySelectorAll("[data-label]").forEach((c) => c.addEventListener("change", () => {
    const v = +c.dataset.label;
    if (c.checked) state.hidden.delete(v); else state.hidden.add(v);
    applyLut();
  }));
  body.querySelectorAll("[data-colour]").forEach((c) => c.addEventListener("input", () => {
    const l = state.labels.find((x) => x.value === +c.dataset.colour);
    l.color = [1, 3, 5].map((i) => parseInt(c.value.substr(i, 2), 16));
    applyLut();
  }));
}

async function refreshStructures() {
  if (!state.mask) return renderStructures([]);
  const rows = await api(`/api/studies/${state.study.id}/masks/${state.mask.id}/components?version=${state.version}`);
  renderStructures(rows);
}

function renderStructures(rows) {
  const body = $("#structures tbody"); body.innerHTML = "";
  const shown = [], rest = {};
  for (const r of rows) {  // the 8 largest components of each label; specks summed in one line
    if (r.component <= 8) shown.push(r); else (rest[r.name] = rest[r.name] || []).push(r);
  }
  for (const r of shown) {
    const tr = document.createElement("tr");
    tr.innerHTML = `<td></td><td>${r.component}</td><td>${r.volume_ml.toFixed(2)}</td><td>${r.diameter_mm.toFixed(1)}</td>` +
      `<td><button class="small" data-explain-lesion="${r.label}:${r.component}" title="explain this lesion alone ` +
      `(method chosen under Explain)">explain</button></td>`;
    tr.firstChild.textContent = r.name;
    tr.title = `centre ${r.centre_mm.join(", ")} mm; click to go there`;
    tr.addEventListener("click", () => jumpTo(r.centre_mm));
    tr.querySelector("button").addEventListener("click", guard(async (e) => {
      e.stopPropagation();
      jumpTo(r.centre_mm);
      await explain(r);
    }));
    body.appendChild(tr);
  }
  for (const [name, more] of Object.entries(rest)) {
    const tr = document.createElement("tr");
    const ml = more.reduce((a, r) => a + r.volume_ml, 0);
    tr.innerHTML = `<td colspan="5" class="muted"></td>`;
    tr.firstChild.textContent = `${name}: ${more.length} smaller components, ${ml.toFixed(2)} ml in all`;
    body.appendChild(tr);
  }
}

function jumpTo(mm) {
  nv.scene.crosshairPos = nv.mm2frac(mm);
  nv.drawScene();
  nv.createOnLocationChange && nv.createOnLocationChange();
}

function updateReview() {
  const m = state.mask;
  const latest = m ? m.versions[m.versions.length - 1].version : null;
  $("#save").disabled = !m || !state.dirty || state.version !== latest;
  $("#approve").disabled = $("#reject").disabled = !m || state.dirty || state.version !== latest;
  $("#explain").disabled = !m && !$("#model").value;
  const approved = m && m.status === "approved";
  // a study that arrived as a file has no DICOM images to reference: SEG / RTSTRUCT come as a ZIP
  // with a DICOM series written from the scan, of the modality chosen here (OT unless told)
  const derived = !!state.study && state.study.kind !== "dicom";
  $("#export-derived").hidden = !derived;
  for (const a of document.querySelectorAll("[data-format]")) {
    a.classList.toggle("disabled", !approved);
    const extra = derived && a.dataset.format !== "nifti" ? `&modality=${encodeURIComponent($("#export-modality").value)}` : "";
    a.href = approved ? `/api/studies/${state.study.id}/masks/${m.id}/export?format=${a.dataset.format}${extra}` : "#";
    a.setAttribute("download", "");
  }
  const el = $("#mask-state");
  if (!m) { el.textContent = "No mask yet: run a model."; $("#versions").innerHTML = ""; return; }
  el.innerHTML = `mask by <b></b>: <span class="state-${m.status}">${m.status}</span>` +
    (state.dirty ? " · unsaved correction" : "") + ` · showing v${state.version}`;
  el.querySelector("b").textContent = m.model.name;
  const ol = $("#versions"); ol.innerHTML = "";
  const items = m.versions.map((v) => ({ when: v.when, text: `v${v.version} ${v.kind} by ${v.who}`, version: v.version }))
    .concat(m.events.map((e) => ({ when: e.when, text: `${e.status} v${e.version} by ${e.who}` })))
    .sort((a, b) => (a.when < b.when ? -1 : a.when > b.when ? 1 : 0));
  for (const it of items) {
    const li = document.createElement("li");
    li.textContent = `${it.when.replace("T", " ").slice(0, 19)} · ${it.text}`;
    if (it.version) {
      li.title = "show this version";
      li.addEventListener("click", guard(() => showMask(m, it.version)));
      if (it.version === state.version) li.className = "sel";
    }
    ol.appendChild(li);
  }
}

function tool(name) {
  for (const b of ["nav", "brush", "eraser"]) $(`#tool-${b}`).classList.toggle("on", b === name);
  if (name === "nav") { nv.setDrawingEnabled(false); return; }
  if (!state.mask) { status("Run a model first: the brush edits its mask.", true); tool("nav"); return; }
  if ($("#outline").checked) { $("#outline").checked = false; showContours(); }  // edit the filled mask
  nv.setDrawingEnabled(true);
  nv.opts.penSize = +$("#pen").value;
  nv.setPenValue(name === "brush" ? +$("#pen-label").value : 0, false);
}

async function saveCorrection() {
  const bytes = await nv.saveImage({ filename: "", isSaveDrawing: true });
  if (!(bytes instanceof Uint8Array)) throw new Error("the drawing could not be saved");
  const info = await api(`/api/studies/${state.study.id}/masks/${state.mask.id}/versions?parent=${state.version}`,
    { method: "POST", body: bytes, headers: { "Content-Type": "application/octet-stream" } });
  state.mask = info; state.version = info.versions[info.versions.length - 1].version; state.dirty = false;
  document.body.dataset.maskVersion = `${info.id}:${state.version}`;
  updateReview(); await refreshStructures();
  status(`Saved correction as version ${state.version}.`);
}

async function setStatus(s) {
  const info = await api(`/api/studies/${state.study.id}/masks/${state.mask.id}/status`,
    { method: "POST", json: { status: s, version: state.version } });
  state.mask = info; updateReview();
  status(`Version ${state.version} ${s} by ${user() || state.info.user}.`);
}

// ------------------------------------------------------------------ jobs
async function runModel() {
  const t0 = performance.now();  // "Run to contours" counts from the click, the request included
  const job = await api(`/api/studies/${state.study.id}/run`, { method: "POST", json: { model: $("#model").value } });
  state.runStarted[job.id] = t0;
  status(job.message);
  if (state.lastJobs) onJobs(state.lastJobs);  // it may have finished before this response came back
}

// explain the current label, or (``lesion``: a row of the structures table) that one connected
// component of the shown mask version alone
async function explain(lesion) {
  const model = state.mask ? state.mask.model.id : $("#model").value;
  const json = { model, method: $("#explain-method").value, label: $("#explain-label").value };
  if (lesion && lesion.component) {
    Object.assign(json, { label: lesion.label, mask: state.mask.id, version: state.version, component: lesion.component });
  }
  const job = await api(`/api/studies/${state.study.id}/explain`, { method: "POST", json });
  status(`explain${lesion && lesion.component ? ` ${lesion.name} #${lesion.component}` : ""}: ${job.message}`);
}

function listenJobs() {
  const es = new EventSource("/api/events");
  es.addEventListener("jobs", (e) => onJobs(JSON.parse(e.data)));
  es.onerror = () => { $("#queue-state").textContent = "reconnecting..."; };
}

function onJobs(data) {
  const c = data.counts;
  const badge = $("#queue-state");
  const running = c.running || 0, queued = c.queued || 0;
  badge.textContent = queued ? `busy: ${running} running, ${queued} queued` : running ? `${running} running` : "idle";
  badge.className = "badge" + (queued ? " busy" : running ? " running" : "");
  const ul = $("#jobs"); ul.innerHTML = "";
  const mine = data.jobs.filter((j) => state.study && j.study === state.study.id).slice(0, 8);
  for (const j of mine) {
    const li = document.createElement("li");
    li.dataset.state = j.state;
    li.innerHTML = `<div></div><progress max="1"></progress>`;
    li.firstChild.textContent = `${j.kind} ${j.params.model_name || j.params.method || ""}: ${j.state}` +
      (j.state === "queued" || j.state === "running" || j.state === "failed" ? ` (${j.message})` : "") +
      (j.seconds ? ` ${j.seconds.toFixed(1)} s` : "");
    li.lastChild.value = j.progress;
    if (j.state === "failed") li.className = "error";
    ul.appendChild(li);
  }
  state.lastJobs = data;
  for (const j of data.jobs) {
    if (j.state !== "done" && j.state !== "failed") continue;
    if (state.seenJobs.has(j.id)) continue;
    // a finished run this page has not started (yet): its POST may still be on its way back when
    // a fast job's "done" arrives, so it is not marked seen; runModel looks again once it knows the id
    if (!(j.id in state.runStarted) && !j.kind.startsWith("explain")) continue;
    state.seenJobs.add(j.id);
    if (!state.study || j.study !== state.study.id) continue;
    if (j.state === "failed") { status(`${j.kind} failed: ${j.message}`, true); continue; }
    if (j.kind === "segment") guard(onSegmented)(j);
    if (j.kind === "explain") guard(onExplained)(j);
  }
}

async function onSegmented(job) {
  await refreshMasks(false);
  const mask = state.masks.find((m) => m.id === job.result.mask);
  await showMask(mask);
  const t = (performance.now() - state.runStarted[job.id]) / 1000;
  state.timings.runToContours = t;
  document.body.dataset.runToContours = t.toFixed(3);
  status(`Contours ready: ${t.toFixed(2)} s from Run (model ${job.seconds.toFixed(2)} s).`);
}

async function onExplained(job) {
  const r = job.result;
  if (state.heat) { nv.removeVolume(state.heat); state.heat = null; }
  if (r.empty) {
    status(`Explanation: ${r.method} is zero everywhere (the model predicts nothing to explain for this label).`);
    return;
  }
  await nv.addVolumeFromUrl({ url: `/api/studies/${state.study.id}/explain/${r.explanation}.nii.gz`,
    name: "explain.nii.gz", colormap: "warm", opacity: $("#heat-visible").checked ? 0.6 : 0,
    cal_min: r.display[0], cal_max: r.display[1] });
  state.heat = nv.volumes[nv.volumes.length - 1];
  state.heat.colorbarVisible = true;
  nv.opts.isColorbar = true;
  nv.updateGLVolume();
  document.body.dataset.explained = r.explanation;
  const what = r.lesion ? ` for lesion #${r.lesion.component} of label ${r.lesion.label} (${r.lesion.voxels} voxels)`
    : r.label != null ? " for label " + r.label : "";
  status(`Explanation: ${r.method}${what} (heat map of |attribution|, colour bar from its 90th to 99.9th percentile).`);
}

start().catch((e) => status(e.message, true));
