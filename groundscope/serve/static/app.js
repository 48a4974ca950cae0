// groundscope web page: pick an image, post it to /v1/<task>, draw the answer's boxes on a canvas.
// Plain browser JavaScript, no build step and no network beyond this server, so it works offline.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("form"), fileInput = $("file"), drop = $("drop"), runButton = $("run");
  const stage = $("stage"), canvas = $("canvas"), ctx = canvas.getContext("2d");
  const statusLine = $("status"), resultList = $("results"), jsonView = $("json"), countBadge = $("count");

  // Colour-blind-friendly palette (Okabe-Ito plus two), one colour per class id.
  const PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#7FDBFF", "#B10DC9"];

  const state = { file: null, image: null, record: null, highlight: -1 };

  function setStatus(text, kind) {
    statusLine.textContent = text;
    statusLine.dataset.kind = kind || "info";
  }

  function currentTask() {
    return form.querySelector('input[name="task"]:checked').value;
  }

  // Show only the fields of the chosen task (data-task lists the tasks a field belongs to).
  function showTaskFields() {
    const task = currentTask();
    for (const el of form.querySelectorAll("[data-task]")) {
      el.hidden = !el.dataset.task.split(" ").includes(task);
    }
  }

  function bindRange(id) {
    const input = $(id), out = $(id + "-value");
    const sync = () => { out.textContent = Number(input.value).toFixed(2); };
    input.addEventListener("input", sync);
    sync();
  }

  // ------------------------------------------------------------------ image in
  function useFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      setStatus(`"${file.name}" is not an image (${file.type}); choose a JPEG, PNG or WebP.`, "error");
      return;
    }
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      state.file = file;
      state.image = img;
      state.record = null;
      $("file-name").textContent = `${file.name || "pasted image"} · ${img.naturalWidth}×${img.naturalHeight}`;
      stage.dataset.state = "ready";
      stage.dataset.count = "0";
      renderResults();
      draw();
      runButton.disabled = false;
      setStatus("Ready: fill in the prompt and press Find.", "info");
    };
    img.onerror = () => {
      URL.revokeObjectURL(url);
      setStatus(`The browser cannot display "${file.name}"; the server may still read it.`, "warn");
      state.file = file;
      state.image = null;
      runButton.disabled = false;
    };
    img.src = url;
  }

  fileInput.addEventListener("change", () => useFile(fileInput.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => useFile(e.dataTransfer.files[0]));
  document.addEventListener("paste", (e) => {
    const item = [...(e.clipboardData?.items || [])].find((it) => it.type.startsWith("image/"));
    if (item) useFile(item.getAsFile());
  });

  // ------------------------------------------------------------------ request
  function buildForm(task) {
    const body = new FormData();
    body.append("image", state.file, state.file.name || "pasted.png");
    const maxDet = $("max-detections").value.trim();
    if (task === "detect") {
      const classes = $("classes").value.trim();
      if (!classes.replace(/,/g, "").trim()) throw new Error("Type at least one class name, e.g. cat, remote control.");
      body.append("classes", classes);
      body.append("box_threshold", $("box-threshold").value);
      if (maxDet) body.append("max_detections", maxDet);
    } else if (task === "ground") {
      const caption = $("caption").value.trim();
      if (!caption) throw new Error("Type the caption whose phrases to find.");
      body.append("caption", caption);
      for (const p of $("phrases").value.split(";").map((s) => s.trim()).filter(Boolean)) body.append("phrase", p);
      body.append("box_threshold", $("box-threshold").value);
      body.append("text_threshold", $("text-threshold").value);
      if (maxDet) body.append("max_detections", maxDet);
    } else {
      const expression = $("expression").value.trim();
      if (!expression) throw new Error("Type the expression that singles out one object.");
      body.append("expression", expression);
      body.append("top_k", $("top-k").value || "1");
    }
    return body;
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!state.file) { setStatus("Choose an image first.", "error"); return; }
    const task = currentTask();
    let body;
    try { body = buildForm(task); } catch (err) { setStatus(err.message, "error"); return; }
    runButton.disabled = true;
    stage.dataset.state = "running";
    setStatus(`Running ${task}…`, "info");
    const started = performance.now();
    try {
      const response = await fetch(`/v1/${task}`, { method: "POST", body });
      const payload = await response.json()
        .catch(() => ({ error: `HTTP ${response.status} with a body that is not JSON` }));
      if (!response.ok) throw new Error(payload.error || `HTTP ${response.status}`);
      state.record = payload;
      state.highlight = -1;
      const ms = Math.round(performance.now() - started);
      const n = payload.detections.length;
      setStatus(`${n} box${n === 1 ? "" : "es"} in ${ms} ms (${payload.model}).`, "ok");
      stage.dataset.state = "done";
      stage.dataset.count = String(n);
    } catch (err) {
      state.record = null;
      stage.dataset.state = "error";
      stage.dataset.count = "0";
      setStatus(err.message, "error");
    } finally {
      runButton.disabled = false;
      renderResults();
      draw();
    }
  });

  // ------------------------------------------------------------------ drawing
  function colourFor(det) {
    return PALETTE[Math.abs(det.class_id) % PALETTE.length];
  }

  function draw() {
    const img = state.image;
    $("placeholder").hidden = Boolean(img);
    if (!img) { ctx.clearRect(0, 0, canvas.width, canvas.height); return; }
    // The canvas holds the image at full resolution (boxes are in its pixels); CSS scales it to fit.
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    ctx.drawImage(img, 0, 0);
    const dets = state.record ? state.record.detections : [];
    const side = Math.min(canvas.width, canvas.height);
    const line = Math.max(2, Math.round(side / 220));
    const font = Math.max(12, Math.round(side / 32));
    ctx.font = `600 ${font}px system-ui, -apple-system, "Segoe UI", sans-serif`;
    ctx.textBaseline = "top";
    // Draw the highlighted box last so it sits on top.
    const order = dets.map((_, i) => i).sort((a, b) => (a === state.highlight) - (b === state.highlight));
    const placed = [];  // label rectangles drawn so far: a label that would cover one moves down a line
    const overlaps = (r) => placed.some(
      (q) => r.x < q.x + q.w && q.x < r.x + r.w && r.y < q.y + q.h && q.y < r.y + r.h);
    for (const i of order) {
      const d = dets[i];
      const [x1, y1, x2, y2] = d.box;
      const colour = colourFor(d);
      const dim = state.highlight >= 0 && i !== state.highlight;
      ctx.globalAlpha = dim ? 0.35 : 1;
      ctx.lineWidth = i === state.highlight ? line * 2 : line;
      ctx.strokeStyle = colour;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const text = `${d.label} ${d.score.toFixed(2)}`;
      const pad = Math.round(font / 4);
      const w = ctx.measureText(text).width + 2 * pad, h = font + 2 * pad;
      let ty = y1 - h >= 0 ? y1 - h : y1;  // above the box, or inside it at the top edge
      const tx = Math.min(Math.max(0, x1 - line / 2), canvas.width - w);
      for (let k = 0; k < 8 && overlaps({ x: tx, y: ty, w, h }); k++) ty = Math.min(ty + h, canvas.height - h);
      placed.push({ x: tx, y: ty, w, h });
      ctx.fillStyle = colour;
      ctx.fillRect(tx, ty, w, h);
      ctx.fillStyle = "#111";
      ctx.fillText(text, tx + pad, ty + pad);
    }
    ctx.globalAlpha = 1;
  }

  function renderResults() {
    const dets = state.record ? state.record.detections : [];
    countBadge.textContent = String(dets.length);
    resultList.replaceChildren(...dets.map((d, i) => {
      const li = document.createElement("li");
      li.className = "result";
      li.dataset.index = String(i);
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colourFor(d);
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = d.label;  // textContent, never innerHTML: labels echo user text
      const score = document.createElement("span");
      score.className = "score";
      score.textContent = d.score.toFixed(3);
      const box = document.createElement("span");
      box.className = "box";
      box.textContent = d.box.map((v) => Math.round(v)).join(", ");
      li.append(swatch, label, score, box);
      li.addEventListener("mouseenter", () => { state.highlight = i; draw(); });
      li.addEventListener("mouseleave", () => { state.highlight = -1; draw(); });
      return li;
    }));
    jsonView.textContent = state.record ? JSON.stringify(state.record, null, 2) : "";
  }

  // ------------------------------------------------------------------ start
  for (const radio of form.querySelectorAll('input[name="task"]')) radio.addEventListener("change", showTaskFields);
  bindRange("box-threshold");
  bindRange("text-threshold");
  showTaskFields();
  fetch("/healthz")
    .then((r) => r.json())
    .then((h) => {
      $("model").textContent = `${h.model} · ${h.device}`;
      $("model").dataset.ok = String(h.status === "ok");
    })
    .catch(() => { $("model").textContent = "server unreachable"; $("model").dataset.ok = "false"; });
})();
