// groundscope web page: pick an image, post it to /v1/<task>, draw the answer's boxes on a canvas (and, with
// "Masks" ticked, each box's mask: COCO RLE from the answer, decoded by rle.js, tinted in the box's colour).
// Describe (when the server has a describer): drag a box on the image, or type one or an expression, and read
// the region's description.
// Plain browser JavaScript, no build step and no network beyond this server, so it works offline.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const form = $("form"), fileInput = $("file"), drop = $("drop"), runButton = $("run");
  const stage = $("stage"), canvas = $("canvas"), ctx = canvas.getContext("2d");
  const statusLine = $("status"), resultList = $("results"), jsonView = $("json"), countBadge = $("count");

  // Colour-blind-friendly palette (Okabe-Ito plus two), one colour per class id.
  const PALETTE = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#7FDBFF", "#B10DC9"];
  // How strongly a mask tints the image: strong enough to see on a photo, weak enough to see the object through.
  const MASK_ALPHA = 0.4;

  // items: what the answer shows, one per box: {box, label, score|null, class_id, text?, error?}.
  // dragBox: the region being dragged on the canvas (Describe), in image pixels.
  // maskLayers: per item, its mask painted in its colour on a canvas of the mask's size (null: no mask), built
  // once per answer so hovering a row redraws without decoding again.
  const state = { file: null, image: null, record: null, items: [], highlight: -1, dragBox: null, maskLayers: [] };

  // The API key (servers started with --api-key): typed once, kept in sessionStorage so it lasts for this tab
  // only (not written to disk like localStorage), and sent as "Authorization: Bearer <key>" on every request.
  const KEY_STORE = "groundscope.apiKey";
  const keyInput = $("api-key"), keyField = $("api-key-field");

  function apiKey() {
    try { return sessionStorage.getItem(KEY_STORE) || ""; } catch { return keyInput.value.trim(); }
  }

  function saveKey() {
    const key = keyInput.value.trim();
    try {
      if (key) sessionStorage.setItem(KEY_STORE, key); else sessionStorage.removeItem(KEY_STORE);
    } catch { /* storage disabled: apiKey() reads the field instead */ }
  }

  function authHeaders() {
    const key = apiKey();
    return key ? { Authorization: `Bearer ${key}` } : {};
  }

  function askForKey() {
    keyField.hidden = false;
    keyInput.focus();
  }

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
    stage.dataset.drawing = String(task === "describe");
    $("results-title").textContent = task === "describe" ? "Regions" : "Detections";
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
      state.items = [];
      state.maskLayers = [];
      state.dragBox = null;
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
    } else if (task === "describe") {
      const boxText = $("region-box").value.trim(), expression = $("region-expression").value.trim();
      if (boxText && expression) throw new Error("Give a region box or an expression, not both.");
      if (boxText) {
        const v = boxText.split(",").map(Number);
        if (v.length !== 4 || v.some(Number.isNaN) || v[2] <= v[0] || v[3] <= v[1]) {
          throw new Error("A region box is x1,y1,x2,y2 in pixels with x2 > x1 and y2 > y1 (or drag one on the image).");
        }
        body.append("box", v.map((x) => Math.round(x)).join(","));
      } else if (expression) {
        body.append("expression", expression);
      } else {
        throw new Error("Drag a box on the image (or type x1,y1,x2,y2), or type an expression.");
      }
    } else {
      const expression = $("expression").value.trim();
      if (!expression) throw new Error("Type the expression that singles out one object.");
      body.append("expression", expression);
      body.append("top_k", $("top-k").value || "1");
    }
    if (task !== "describe" && $("masks").checked) body.append("masks", "true");
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
      const response = await fetch(`/v1/${task}`, { method: "POST", body, headers: authHeaders() });
      const payload = await response.json()
        .catch(() => ({ error: `HTTP ${response.status} with a body that is not JSON` }));
      if (response.status === 401) {  // no key, or the wrong one: ask for it, say what the server said
        askForKey();
        throw new Error(`${payload.error || "HTTP 401"}. Enter the server's API key above Find and press Find again.`);
      }
      if (!response.ok) throw new Error(payload.error || `HTTP ${response.status}`);
      state.record = payload;
      state.items = toItems(task, payload);
      state.highlight = -1;
      state.dragBox = null;
      const ms = Math.round(performance.now() - started);
      const n = state.items.length;
      let maskNote = "", kind = "ok";
      try {
        state.maskLayers = state.items.map(maskLayer);
        if (state.maskLayers.some(Boolean)) maskNote = " with masks";
      } catch (err) {  // a mask the page cannot read: still show the boxes, and say why the masks are missing
        state.maskLayers = [];
        maskNote = ` (masks not shown: ${err.message})`;
        kind = "warn";
      }
      setStatus(task === "describe"
        ? `${n} region${n === 1 ? "" : "s"} described in ${ms} ms (${payload.model}).`
        : `${n} box${n === 1 ? "" : "es"}${maskNote} in ${ms} ms (${payload.model}).`, kind);
      stage.dataset.state = "done";
      stage.dataset.count = String(n);
    } catch (err) {
      state.record = null;
      state.items = [];
      state.maskLayers = [];
      stage.dataset.state = "error";
      stage.dataset.count = "0";
      setStatus(err.message, "error");
    } finally {
      runButton.disabled = false;
      renderResults();
      draw();
    }
  });

  // One list for every task: detections as they are; described regions numbered, with their text.
  function toItems(task, record) {
    if (task !== "describe") return record.detections;
    return record.regions.map((r, i) => ({
      box: r.box, label: `${i + 1}`, name: r.expression || r.name, score: r.score ?? null, class_id: i,
      text: r.text, error: r.error,
    }));
  }

  // ------------------------------------------------------------------ drawing a region (Describe)
  function imagePoint(e) {
    const rect = canvas.getBoundingClientRect();  // CSS pixels -> the canvas's image pixels
    const x = ((e.clientX - rect.left) * canvas.width) / rect.width;
    const y = ((e.clientY - rect.top) * canvas.height) / rect.height;
    return [Math.min(Math.max(0, x), canvas.width), Math.min(Math.max(0, y), canvas.height)];
  }

  let dragStart = null;
  canvas.addEventListener("pointerdown", (e) => {
    if (currentTask() !== "describe" || !state.image) return;
    dragStart = imagePoint(e);
    canvas.setPointerCapture(e.pointerId);
  });
  canvas.addEventListener("pointermove", (e) => {
    if (!dragStart) return;
    const [x, y] = imagePoint(e);
    state.dragBox = [Math.min(dragStart[0], x), Math.min(dragStart[1], y), Math.max(dragStart[0], x),
      Math.max(dragStart[1], y)];
    draw();
  });
  canvas.addEventListener("pointerup", () => {
    if (!dragStart) return;
    dragStart = null;
    const b = state.dragBox;
    if (b && b[2] - b[0] >= 2 && b[3] - b[1] >= 2) {
      $("region-box").value = b.map((v) => Math.round(v)).join(",");
      $("region-expression").value = "";
      setStatus("Region set: press Find to describe it.", "info");
    } else {
      state.dragBox = null;
    }
    draw();
  });

  // ------------------------------------------------------------------ drawing
  function colourFor(det) {
    return PALETTE[Math.abs(det.class_id) % PALETTE.length];
  }

  // An item's mask as an offscreen canvas: opaque in the item's colour inside the mask, transparent outside.
  // draw() lays it over the image at MASK_ALPHA, which blends it the same on any browser.
  function maskLayer(d) {
    if (!d.mask) return null;
    const { height, width, data } = window.GroundscopeRle.decode(d.mask);
    const layer = document.createElement("canvas");
    layer.width = width;
    layer.height = height;
    const lctx = layer.getContext("2d");
    const pixels = lctx.createImageData(width, height);
    const hex = colourFor(d);
    const rgb = [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    for (let i = 0; i < data.length; i++) {
      if (!data[i]) continue;
      const o = 4 * i;
      pixels.data[o] = rgb[0];
      pixels.data[o + 1] = rgb[1];
      pixels.data[o + 2] = rgb[2];
      pixels.data[o + 3] = 255;
    }
    lctx.putImageData(pixels, 0, 0);
    return layer;
  }

  function draw() {
    const img = state.image;
    $("placeholder").hidden = Boolean(img);
    if (!img) { ctx.clearRect(0, 0, canvas.width, canvas.height); return; }
    // The canvas holds the image at full resolution (boxes are in its pixels); CSS scales it to fit.
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    ctx.drawImage(img, 0, 0);
    const dets = state.items;
    const side = Math.min(canvas.width, canvas.height);
    const line = Math.max(2, Math.round(side / 220));
    const font = Math.max(12, Math.round(side / 32));
    ctx.font = `600 ${font}px system-ui, -apple-system, "Segoe UI", sans-serif`;
    ctx.textBaseline = "top";
    // Draw the highlighted box (and mask) last so it sits on top.
    const order = dets.map((_, i) => i).sort((a, b) => (a === state.highlight) - (b === state.highlight));
    // Masks first, under every box and label. A mask is at the image's size; drawn stretched to the canvas so
    // one at another size (an image the browser orients differently) still covers the picture, not a corner.
    for (const i of order) {
      const layer = state.maskLayers[i];
      if (!layer) continue;
      const dim = state.highlight >= 0 && i !== state.highlight;
      ctx.globalAlpha = dim ? MASK_ALPHA * 0.35 : MASK_ALPHA;
      ctx.drawImage(layer, 0, 0, canvas.width, canvas.height);
    }
    const placed = [];  // label rectangles drawn so far: a label that would cover one moves down a line
    const overlaps = (r) => placed.some(
      (q) => r.x < q.x + q.w && q.x < r.x + r.w && r.y < q.y + q.h && q.y < r.y + r.h);
    for (const i of order) {
      const d = dets[i];
      if (!Array.isArray(d.box)) continue;  // a region that could not be read has no box
      const [x1, y1, x2, y2] = d.box;
      const colour = colourFor(d);
      const dim = state.highlight >= 0 && i !== state.highlight;
      ctx.globalAlpha = dim ? 0.35 : 1;
      ctx.lineWidth = i === state.highlight ? line * 2 : line;
      ctx.strokeStyle = colour;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const text = d.score === null || d.score === undefined ? d.label : `${d.label} ${d.score.toFixed(2)}`;
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
    if (state.dragBox) {  // the region being drawn, dashed until it is described
      const [x1, y1, x2, y2] = state.dragBox;
      ctx.setLineDash([line * 3, line * 2]);
      ctx.lineWidth = line;
      ctx.strokeStyle = "#111";
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      ctx.strokeStyle = "#fff";
      ctx.lineDashOffset = line * 3;
      ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      ctx.setLineDash([]);
      ctx.lineDashOffset = 0;
    }
  }

  function span(className, text) {
    const el = document.createElement("span");
    el.className = className;
    el.textContent = text;  // textContent, never innerHTML: labels and names echo user text
    return el;
  }

  function boxText(box) {
    return Array.isArray(box) ? box.map((v) => Math.round(v)).join(", ") : "-";
  }

  // One row per item: a colour swatch, its cells, and hovering the row highlights its box on the canvas.
  // A detection: label, score, box. A described region: number and name, box, then its description (or why
  // it was not described).
  function resultRow(d, i) {
    const li = document.createElement("li");
    li.className = d.text === undefined ? "result" : "result region";
    li.dataset.index = String(i);
    const swatch = span("swatch", "");
    swatch.style.background = colourFor(d);
    if (d.text === undefined) {
      li.append(swatch, span("label", d.label), span("score", d.score.toFixed(3)), span("box", boxText(d.box)));
    } else {
      li.append(swatch, span("label", `${d.label}. ${d.name}`), span("box", boxText(d.box)),
        d.error ? span("error", `not described: ${d.error}`) : span("text", d.text));
    }
    li.addEventListener("mouseenter", () => { state.highlight = i; draw(); });
    li.addEventListener("mouseleave", () => { state.highlight = -1; draw(); });
    return li;
  }

  function renderResults() {
    countBadge.textContent = String(state.items.length);
    resultList.replaceChildren(...state.items.map(resultRow));
    jsonView.textContent = state.record ? JSON.stringify(state.record, null, 2) : "";
  }

  // ------------------------------------------------------------------ start
  for (const radio of form.querySelectorAll('input[name="task"]')) radio.addEventListener("change", showTaskFields);
  bindRange("box-threshold");
  bindRange("text-threshold");
  showTaskFields();
  keyInput.value = apiKey();
  keyInput.addEventListener("input", saveKey);
  fetch("/healthz")
    .then((r) => r.json())
    .then((h) => {
      $("model").textContent = h.describer ? `${h.model} + ${h.describer} · ${h.device}` : `${h.model} · ${h.device}`;
      $("describe-task").hidden = !h.describer;
      $("model").dataset.ok = String(h.status === "ok");
      if (h.auth) {
        keyField.hidden = false;
        if (!apiKey()) { setStatus("This server needs an API key: enter it above Find.", "info"); keyInput.focus(); }
      }
    })
    .catch(() => { $("model").textContent = "server unreachable"; $("model").dataset.ok = "false"; });
})();
