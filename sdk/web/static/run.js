// A run's live view: its WatchJob stream as server-sent events (/runs/ID/events). Every value
// goes into the page through textContent or DOM nodes, never as markup.
"use strict";

(function () {
  const run = document.getElementById("run");
  if (!run) return;
  const jobId = run.dataset.jobId;
  const CHARTS = [
    { id: "chart-loss", title: "loss", keys: ["train/loss", "val/loss"] },
    { id: "chart-accuracy", title: "accuracy", keys: ["train/accuracy", "val/accuracy"] },
    { id: "chart-lr", title: "learning rate", keys: ["lr"] },
  ];
  const COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];
  const series = new Map(); // key -> Map(step -> value)
  const seen = new Set(); // task|step|key, so a replayed point is counted once
  const plots = new Map();
  let points = 0;
  let updates = 0;
  let pending = false;

  function text(id, value) {
    const element = document.getElementById(id);
    if (element) element.textContent = String(value);
  }

  function aligned(keys) {
    const steps = new Set();
    for (const key of keys) for (const step of (series.get(key) || new Map()).keys()) steps.add(step);
    const xs = Array.from(steps).sort((a, b) => a - b);
    const data = [xs];
    for (const key of keys) {
      const values = series.get(key) || new Map();
      data.push(xs.map((x) => (values.has(x) ? values.get(x) : null)));
    }
    return data;
  }

  function draw() {
    pending = false;
    for (const chart of CHARTS) {
      const keys = chart.keys.filter((key) => series.has(key));
      if (!keys.length) continue;
      const data = aligned(keys);
      const element = document.getElementById(chart.id);
      const existing = plots.get(chart.id);
      if (existing && existing.keys.join() === keys.join()) {
        existing.plot.setData(data);
        continue;
      }
      if (existing) existing.plot.destroy();
      const options = {
        title: chart.title,
        width: Math.max(320, Math.min(560, element.clientWidth || 480)),
        height: 240,
        scales: { x: { time: false } },
        series: [{ label: "step" }].concat(
          keys.map((key, i) => ({ label: key, stroke: COLOURS[i % COLOURS.length], spanGaps: true }))
        ),
      };
      plots.set(chart.id, { keys: keys, plot: new uPlot(options, data, element) });
    }
    updates += 1;
    text("point-count", points);
    text("update-count", updates);
  }

  function schedule() {
    if (!pending) {
      pending = true;
      window.requestAnimationFrame(draw);
    }
  }

  function addMetrics(rows) {
    for (const [key, step, value, task] of rows) {
      const id = task + "|" + step + "|" + key;
      if (seen.has(id)) continue;
      seen.add(id);
      if (!series.has(key)) series.set(key, new Map());
      series.get(key).set(step, value);
      points += 1;
    }
    schedule();
  }

  function fillRows(tbody, rows) {
    tbody.replaceChildren();
    for (const row of rows) appendRow(tbody, row);
  }

  function appendRow(tbody, cells) {
    const tr = document.createElement("tr");
    for (const cell of cells) {
      const td = document.createElement("td");
      td.textContent = String(cell);
      tr.appendChild(td);
    }
    tbody.appendChild(tr);
  }

  function updateJob(job) {
    const state = document.getElementById("run-state");
    state.textContent = job.state;
    state.className = "state state-" + job.state;
    text("run-error", job.error);
    const tasks = document.querySelector("#tasks tbody");
    if (tasks) fillRows(tasks, job.tasks);
    const final = document.querySelector("#final tbody");
    final.replaceChildren();
    for (const [key, shown, exact] of job.final) {
      const tr = document.createElement("tr");
      const th = document.createElement("th");
      th.textContent = key;
      const td = document.createElement("td");
      td.dataset.key = key;
      td.dataset.value = exact;
      td.textContent = shown;
      tr.append(th, td);
      final.appendChild(tr);
    }
    if (job.finished) {
      const form = document.getElementById("cancel-form");
      if (form) form.remove();
    }
  }

  const history = document.querySelector("#history tbody");
  let historyReplaced = false;
  const log = document.getElementById("log");
  const source = new EventSource("/runs/" + encodeURIComponent(jobId) + "/events");
  source.addEventListener("open", () => text("stream-state", "live"));
  source.addEventListener("metrics", (e) => addMetrics(JSON.parse(e.data)));
  source.addEventListener("job", (e) => updateJob(JSON.parse(e.data)));
  source.addEventListener("history", (e) => {
    // The stream replays the whole history: it replaces the rows rendered with the page.
    if (!historyReplaced) {
      history.replaceChildren();
      historyReplaced = true;
    }
    appendRow(history, JSON.parse(e.data));
  });
  source.addEventListener("logs", (e) => {
    for (const line of JSON.parse(e.data)) log.append(line + "\n");
  });
  source.addEventListener("failure", (e) => {
    text("stream-state", "stream failed: " + JSON.parse(e.data));
    source.close();
  });
  source.addEventListener("end", () => {
    text("stream-state", "finished");
    source.close();
  });
})();
