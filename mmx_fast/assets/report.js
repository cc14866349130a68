(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("mmx-data").textContent);
  var body = document.body;
  var heat = document.getElementById("heat");
  var base = document.getElementById("base");
  var chips = Array.prototype.slice.call(document.querySelectorAll(".chip"));
  var radios = Array.prototype.slice.call(document.querySelectorAll('input[name="view"]'));
  var opacity = document.getElementById("opacity");
  var opacityOut = document.getElementById("opacity-value");
  var cells = document.getElementById("cells");
  var compare = document.getElementById("compare");
  var strip = document.getElementById("strip");
  var caption = document.getElementById("caption");
  var frame = document.getElementById("frame");
  var frameOut = document.getElementById("frame-value");
  var T = data.tokens.length;
  var F = data.frames ? data.frames.length : 0;  // a video: temporal patches (each a pair of frames)
  var state = { token: 0, shown: 0, view: 0, frame: 0 };
  var stripHeat = [];

  function clampToken(i) { return Math.max(0, Math.min(T - 1, i | 0)); }
  function viewIndex(key) {
    for (var k = 0; k < data.views.length; k++) { if (data.views[k].key === key) { return k; } }
    return -1;
  }
  function label(tok) { return JSON.stringify(tok); }
  // a view's map of token i: a PNG, or for a video one PNG per temporal patch (the scrubber picks it)
  function mapOf(v, i) { var m = v.maps[i]; return F ? m[state.frame] : m; }

  function render(i) {
    if (!T) { return; }
    state.shown = i;
    var v = data.views[state.view];
    heat.src = mapOf(v, i);
    chips.forEach(function (c, k) { c.classList.toggle("shown", k === i); });
    stripHeat.forEach(function (img, k) { img.src = mapOf(data.views[k], i); });
    caption.innerHTML = "";
    caption.appendChild(document.createTextNode("Token " + i + " of " + T + ": "));
    var b = document.createElement("b");
    b.textContent = label(data.tokens[i]);
    caption.appendChild(b);
    var when = F ? " \u00b7 frames " + data.frame_pairs[state.frame].join("-") : "";
    caption.appendChild(document.createTextNode(" \u00b7 id " + data.ids[i] + " \u00b7 " + v.label + when));
    body.setAttribute("data-shown", String(i));
  }

  function writeHash() {
    var parts = ["token=" + state.token, "view=" + encodeURIComponent(data.views[state.view].key)];
    if (F) { parts.push("frame=" + state.frame); }
    if (opacity) { parts.push("opacity=" + opacity.value); }
    if (compare && compare.checked) { parts.push("compare=1"); }
    if (cells && cells.checked) { parts.push("cells=1"); }
    try { history.replaceState(null, "", "#" + parts.join("&")); } catch (e) { /* file:// in some browsers */ }
  }

  function select(i) {
    if (!T) { return; }
    state.token = clampToken(i);
    chips.forEach(function (c, k) {
      c.classList.toggle("active", k === state.token);
      c.setAttribute("aria-pressed", k === state.token ? "true" : "false");
    });
    body.setAttribute("data-token", String(state.token));
    render(state.token);
    writeHash();
  }

  function setView(k) {
    if (k < 0 || k >= data.views.length) { return; }
    state.view = k;
    radios.forEach(function (r) { r.checked = r.value === data.views[k].key; });
    Array.prototype.forEach.call(document.querySelectorAll(".strip figure"), function (f, j) {
      f.classList.toggle("on", j === k);
    });
    body.setAttribute("data-view", data.views[k].key);
    render(state.shown);
    writeHash();
  }

  function setOpacity(x) {
    if (!opacity) { return; }
    var v = Math.max(0, Math.min(1, parseFloat(x)));
    if (isNaN(v)) { return; }
    opacity.value = String(v);
    heat.style.opacity = String(v);
    stripHeat.forEach(function (img) { img.style.opacity = String(v); });
    if (opacityOut) { opacityOut.textContent = Math.round(v * 100) + "%"; }
  }

  function setFrame(k) {
    if (!F) { return; }
    k = parseInt(k, 10);
    if (isNaN(k)) { return; }
    state.frame = Math.max(0, Math.min(F - 1, k));
    if (frame) { frame.value = String(state.frame); }
    if (frameOut) { frameOut.textContent = "frames " + data.frame_pairs[state.frame].join("-"); }
    if (base) { base.src = data.frames[state.frame]; }
    stripBase.forEach(function (img) { img.src = data.frames[state.frame]; });
    body.setAttribute("data-frame", String(state.frame));
    render(state.shown);
    writeHash();
  }
  var stripBase = [];

  // the side-by-side strip: one small overlay per view for the shown token
  if (strip && data.views.length > 1) {
    data.views.forEach(function (v, k) {
      var fig = document.createElement("figure");
      var s = document.createElement("div");
      s.className = "s";
      if (base) {
        var b = document.createElement("img");
        b.src = base.src;
        b.alt = "";
        s.appendChild(b);
        stripBase.push(b);
      }
      var h = document.createElement("img");
      h.className = "h";
      h.alt = v.label;
      s.appendChild(h);
      stripHeat.push(h);
      var cap = document.createElement("figcaption");
      cap.textContent = v.label;
      fig.appendChild(s);
      fig.appendChild(cap);
      fig.addEventListener("click", function () { setView(k); });
      strip.appendChild(fig);
    });
    if (!base) { stripHeat.forEach(function (img) { img.style.opacity = "1"; }); }
  }

  chips.forEach(function (c) {
    var i = parseInt(c.getAttribute("data-i"), 10);
    c.addEventListener("mouseenter", function () { render(i); });
    c.addEventListener("mouseleave", function () { render(state.token); });
    c.addEventListener("focus", function () { render(i); });
    c.addEventListener("blur", function () { render(state.token); });
    c.addEventListener("click", function () { select(i); });
  });
  radios.forEach(function (r) {
    r.addEventListener("change", function () { setView(viewIndex(r.value)); });
  });
  if (opacity) {
    opacity.addEventListener("input", function () { setOpacity(opacity.value); writeHash(); });
  }
  if (frame) {
    frame.addEventListener("input", function () { setFrame(frame.value); });
  }
  if (cells) {
    cells.addEventListener("change", function () { body.classList.toggle("cells", cells.checked); writeHash(); });
  }
  if (compare) {
    compare.addEventListener("change", function () { body.classList.toggle("compare", compare.checked); writeHash(); });
  }
  document.addEventListener("keydown", function (e) {
    var tag = (e.target && e.target.tagName) || "";
    if (tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT") { return; }
    if (e.key === "ArrowRight") { select(state.token + 1); if (chips[state.token]) { chips[state.token].focus(); } e.preventDefault(); }
    if (F && e.key === "ArrowUp") { setFrame(state.frame + 1); e.preventDefault(); }
    if (F && e.key === "ArrowDown") { setFrame(state.frame - 1); e.preventDefault(); }
    if (e.key === "ArrowLeft") { select(state.token - 1); if (chips[state.token]) { chips[state.token].focus(); } e.preventDefault(); }
  });

  // state from the URL fragment: #token=3&view=raw&opacity=0.7&compare=1&cells=1
  var params = {};
  function decode(text) {  // a malformed escape (#token=%E0%A4%A) is ignored, never thrown
    try { return decodeURIComponent(text); } catch (e) { return null; }
  }
  (location.hash || "").replace(/^#/, "").split("&").forEach(function (kv) {
    if (!kv) { return; }
    var p = kv.split("=");
    var key = decode(p[0]), value = decode(p.slice(1).join("="));
    if (key !== null && value !== null) { params[key] = value; }
  });
  if (params.opacity !== undefined) { setOpacity(params.opacity); } else if (opacity) { setOpacity(opacity.value); }
  if (cells && params.cells === "1") { cells.checked = true; body.classList.add("cells"); }
  if (compare && params.compare === "1") { compare.checked = true; body.classList.add("compare"); }
  if (F && params.frame !== undefined) { state.frame = Math.max(0, Math.min(F - 1, parseInt(params.frame, 10) || 0)); }
  var vk = params.view !== undefined ? viewIndex(params.view) : 0;
  state.view = vk >= 0 ? vk : 0;
  setView(state.view);
  var t = params.token !== undefined ? parseInt(params.token, 10) : 0;
  select(isNaN(t) ? 0 : t);
  if (F) { setFrame(state.frame); }
  body.setAttribute("data-ready", "1");
})();
