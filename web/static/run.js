// The live run page: follows /runs/ID/ws and draws the progress bar, the figures, the
// per-worker table and a throughput chart. When the run ends the page reloads to show the
// result or the error, which the server renders.
"use strict";

(function () {
  const root = document.getElementById("run");
  if (!root || root.dataset.finished === "true") { return; }
  const runId = root.dataset.runId;
  const byId = function (id) { return document.getElementById(id); };
  const samples = [];
  const MAX_SAMPLES = 300;
  let finished = false;
  let retryDelay = 1000;

  function formatBytes(n) {
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let unit = 0;
    while (n >= 1024 && unit < units.length - 1) { n /= 1024; unit += 1; }
    return unit === 0 ? Math.round(n) + " B" : n.toFixed(1) + " " + units[unit];
  }

  function setText(id, text) {
    const element = byId(id);
    if (element) { element.textContent = text; }
  }

  function drawWorkers(workers) {
    const table = byId("workers");
    if (!table) { return; }
    const body = table.tBodies[0];
    while (body.firstChild) { body.removeChild(body.firstChild); }
    workers.forEach(function (worker) {
      const row = body.insertRow();
      [worker.worker_id, worker.address, worker.chunks_done, worker.lines_done, formatBytes(worker.bytes_done),
        worker.in_flight].forEach(function (value) {
        // textContent, never innerHTML: addresses come from the cluster.
        row.insertCell().textContent = String(value);
      });
    });
  }

  // The chart's geometry and scales, as the server draws an ended run's (http/chart.rs).
  const LEFT = 64, RIGHT = 628, TOP = 12, BOTTOM = 184, TICKS = 5;
  const SVG = "http://www.w3.org/2000/svg";

  function niceCeiling(value) {
    if (!(value > 0)) { return 1; }
    const power = Math.pow(10, Math.floor(Math.log10(value)));
    const nice = [1, 2, 2.5, 5, 10].map(function (m) { return m * power; })
      .find(function (n) { return n >= value * 0.999999; });
    return nice || 10 * power;
  }

  function rateUnit(bytesPerSecond) {
    const units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let size = 1;
    let unit = 0;
    while (bytesPerSecond / size >= 1024 && unit < units.length - 1) { size *= 1024; unit += 1; }
    return [size, units[unit]];
  }

  function number(value) { return String(Math.round(value * 100) / 100); }

  function svgElement(name, attributes, text) {
    const element = document.createElementNS(SVG, name);
    Object.keys(attributes).forEach(function (key) { element.setAttribute(key, attributes[key]); });
    if (text !== undefined) { element.textContent = text; }
    return element;
  }

  function drawChart() {
    const line = byId("chart-line");
    const ticks = byId("chart-ticks");
    if (!line || !ticks || samples.length === 0) { return; }
    const xMax = niceCeiling(samples[samples.length - 1].t / 1000);
    const top = Math.max.apply(null, samples.map(function (s) { return s.bps; }));
    const scale = rateUnit(top);
    const yMax = Math.max(niceCeiling(top / scale[0]), 1);
    const x = function (ms) { return LEFT + (ms / 1000) / xMax * (RIGHT - LEFT); };
    const y = function (bps) { return BOTTOM - (bps / scale[0]) / yMax * (BOTTOM - TOP); };
    line.setAttribute("points", samples.map(function (s) {
      return x(s.t).toFixed(1) + "," + y(s.bps).toFixed(1);
    }).join(" "));
    // The tick elements are made once and changed in place.
    if (!ticks.firstChild) {
      for (let n = 0; n < TICKS; n += 1) {
        ticks.appendChild(svgElement("line", { "class": "grid", x1: LEFT, x2: RIGHT }));
        ticks.appendChild(svgElement("text", { "class": "axis-label y-label", x: LEFT - 6,
          "text-anchor": "end", "dominant-baseline": "middle" }, ""));
        ticks.appendChild(svgElement("text", { "class": "axis-label x-label", y: 200, "text-anchor": "middle" }, ""));
      }
    }
    const grid = ticks.querySelectorAll(".grid");
    const yLabels = ticks.querySelectorAll(".y-label");
    const xLabels = ticks.querySelectorAll(".x-label");
    for (let n = 0; n < TICKS; n += 1) {
      const share = n / (TICKS - 1);
      const at = BOTTOM - share * (BOTTOM - TOP);
      grid[n].setAttribute("y1", at);
      grid[n].setAttribute("y2", at);
      yLabels[n].setAttribute("y", at);
      yLabels[n].textContent = number(share * yMax) + " " + scale[1];
      xLabels[n].setAttribute("x", LEFT + share * (RIGHT - LEFT));
      xLabels[n].textContent = number(share * xMax) + " s";
    }
  }

  function update(progress) {
    const state = byId("state");
    if (state) { state.textContent = progress.state; state.className = "badge state-" + progress.state; }
    const bar = byId("progress");
    if (bar) { bar.value = progress.percent; }
    setText("percent", Math.floor(progress.percent) + " %");
    setText("chunks", progress.chunks_done + " / " + progress.n_chunks);
    setText("bytes", formatBytes(progress.bytes_done) + " of " + formatBytes(progress.bytes_total));
    setText("lines", String(progress.lines_done));
    setText("throughput", formatBytes(progress.throughput_bps) + "/s");
    setText("retries", String(progress.retries));
    // The building phase, before the chunks: "Compiling (12/41): abi_stable".
    const build = byId("build");
    if (build) { build.hidden = !progress.build; build.textContent = progress.build || ""; }
    drawWorkers(progress.workers || []);
    // The chart starts with the first chunk done: building and loading the plugin come before.
    if ((progress.state === "running" || progress.state === "aggregating") && progress.bytes_done > 0) {
      // Time since the run began, as the server's chart of an ended run has it.
      samples.push({ t: progress.elapsed_ms, bps: progress.throughput_bps });
      if (samples.length > MAX_SAMPLES) { samples.shift(); }
      drawChart();
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(scheme + "//" + location.host + "/runs/" + runId + "/ws");
    socket.onopen = function () { retryDelay = 1000; };
    socket.onmessage = function (event) {
      const progress = JSON.parse(event.data);
      update(progress);
      if (progress.finished && !finished) {
        finished = true;
        socket.close();
        // Let the last figures show for a moment, then let the server render the outcome.
        setTimeout(function () { location.reload(); }, 500);
      }
    };
    socket.onclose = function () {
      if (!finished) {
        setTimeout(connect, retryDelay);
        retryDelay = Math.min(retryDelay * 2, 15000);
      }
    };
  }

  connect();
})();
