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

  function drawChart() {
    const line = byId("chart-line");
    if (!line || samples.length === 0) { return; }
    const first = samples[0].t;
    const span = Math.max(samples[samples.length - 1].t - first, 1);
    const top = Math.max.apply(null, samples.map(function (s) { return s.bps; }).concat([1]));
    const points = samples.map(function (s) {
      const x = ((s.t - first) / span) * 600;
      const y = 155 - (s.bps / top) * 145;
      return x.toFixed(1) + "," + y.toFixed(1);
    });
    line.setAttribute("points", points.join(" "));
    setText("chart-scale", "Peak " + formatBytes(top) + "/s over " + (span / 1000).toFixed(1) + " s");
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
    drawWorkers(progress.workers || []);
    // The chart starts with the first chunk done: building and loading the plugin come before.
    if ((progress.state === "running" || progress.state === "aggregating") && progress.bytes_done > 0) {
      samples.push({ t: Date.now(), bps: progress.throughput_bps });
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
