// A study's page: the coordinator's aggregated summary (bounded in size whatever the number of
// trials) drawn with uPlot and a canvas; every value goes in as text or through DOM APIs.
"use strict";

(function () {
  const root = document.getElementById("study");
  if (!root) return;
  const studyId = root.dataset.studyId;
  const query = root.dataset.query || "";
  const base = "/studies/" + encodeURIComponent(studyId);
  const plots = [];

  function text(id, value) {
    const element = document.getElementById(id);
    if (element) element.textContent = String(value);
  }

  function format(value) {
    if (value === null || value === undefined) return "-";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value)) return String(value);
    return value.toPrecision(4);
  }

  function params(object) {
    return Object.keys(object || {})
      .sort()
      .map((key) => key + "=" + format(object[key]))
      .join(", ");
  }

  function scatter(label, stroke) {
    return { label: label, stroke: stroke, paths: () => null, points: { show: true, size: 4, fill: stroke } };
  }

  function plot(element, options, data) {
    const chart = new uPlot(Object.assign({ width: 480, height: 240 }, options), data, element);
    plots.push(chart);
    return chart;
  }

  function drawHistory(summary) {
    const history = summary.history;
    const xs = history.number;
    const completed = xs.map((_, i) => (history.state[i] === "completed" ? history.value[i] : null));
    const pruned = xs.map((_, i) => (history.state[i] === "pruned" ? history.value[i] : null));
    const steps = summary.best_so_far;
    let j = -1;
    const best = xs.map((x) => {
      while (j + 1 < steps.number.length && steps.number[j + 1] <= x) j += 1;
      return j >= 0 ? steps.value[j] : null;
    });
    plot(
      document.getElementById("chart-history"),
      {
        width: 960,
        title: summary.study.objective + " by trial",
        scales: { x: { time: false } },
        series: [
          { label: "trial" },
          scatter("completed", "#1f77b4"),
          scatter("pruned", "#d62728"),
          { label: "best so far", stroke: "#2ca02c", width: 2, spanGaps: true },
        ],
      },
      [xs, completed, pruned, best]
    );
  }

  function drawCurves(summary) {
    const resources = new Set();
    for (const curve of summary.curves) for (const r of curve.resource) resources.add(r);
    const xs = Array.from(resources).sort((a, b) => a - b);
    const data = [xs];
    const series = [{ label: "resource" }];
    for (const curve of summary.curves) {
      const values = new Map(curve.resource.map((r, i) => [r, curve.value[i]]));
      data.push(xs.map((x) => (values.has(x) ? values.get(x) : null)));
      const prunedAt = curve.state === "pruned" ? " pruned @" + format(curve.pruned_resource) : "";
      series.push({
        label: "#" + format(curve.number) + prunedAt,
        stroke: curve.state === "pruned" ? "#d62728" : "#1f77b4",
        dash: curve.state === "pruned" ? [4, 4] : undefined,
        spanGaps: true,
      });
    }
    plot(document.getElementById("chart-curves"), {
      width: 960, legend: { show: false }, scales: { x: { time: false } }, series: series,
    }, data);
    const rungs = Object.keys(summary.pruned_by_rung).sort((a, b) => a - b);
    text("pruned-by-rung", rungs.map((r) => "rung " + r + ": " + summary.pruned_by_rung[r]).join(", ") || "none");
  }

  function drawImportance(summary) {
    const holder = document.getElementById("importance");
    holder.replaceChildren();
    const ranked = summary.params.slice().sort((a, b) => b.importance - a.importance);
    for (const param of ranked) {
      const row = document.createElement("div");
      row.className = "bar-row";
      const name = document.createElement("span");
      name.className = "bar-name";
      name.textContent = param.name;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = Math.round(param.importance * 300) + "px";
      const value = document.createElement("span");
      value.textContent = (param.importance * 100).toFixed(1) + " %";
      row.append(name, bar, value);
      holder.appendChild(row);
    }
  }

  function drawParams(summary) {
    const holder = document.getElementById("param-charts");
    holder.replaceChildren();
    for (const param of summary.params) {
      const element = document.createElement("div");
      holder.appendChild(element);
      const label = param.name + (param.log ? " (log10)" : param.type === "categorical" ? " (choice index)" : "");
      plot(element, {
        title: label,
        scales: { x: { time: false } },
        series: [{ label: param.name }, scatter(summary.study.objective, "#9467bd")],
      }, [param.x, param.value]);
    }
  }

  function drawParallel(summary) {
    const canvas = document.getElementById("parallel");
    const context = canvas.getContext("2d");
    const axes = summary.parallel.axes.map((a) => a.name).concat([summary.study.objective]);
    const rows = summary.parallel.rows;
    const width = canvas.width;
    const height = canvas.height;
    context.clearRect(0, 0, width, height);
    const low = axes.map((_, k) => Math.min(...rows.map((r) => r[k]).filter((v) => v !== null)));
    const high = axes.map((_, k) => Math.max(...rows.map((r) => r[k]).filter((v) => v !== null)));
    const x = (k) => 60 + (k * (width - 120)) / Math.max(1, axes.length - 1);
    const y = (k, v) => height - 30 - ((v - low[k]) / ((high[k] - low[k]) || 1)) * (height - 60);
    const last = axes.length - 1;
    context.globalAlpha = 0.35;
    for (const row of rows) {
      const t = (row[last] - low[last]) / ((high[last] - low[last]) || 1);
      context.strokeStyle = "hsl(" + Math.round(240 - 200 * t) + ",70%,45%)";
      context.beginPath();
      let started = false;
      for (let k = 0; k < axes.length; k++) {
        if (row[k] === null) continue;
        if (started) context.lineTo(x(k), y(k, row[k]));
        else context.moveTo(x(k), y(k, row[k]));
        started = true;
      }
      context.stroke();
    }
    context.globalAlpha = 1;
    context.fillStyle = "#1d2330";
    context.strokeStyle = "#1d2330";
    context.font = "12px sans-serif";
    context.textAlign = "center";
    axes.forEach((name, k) => {
      context.beginPath();
      context.moveTo(x(k), 30);
      context.lineTo(x(k), height - 30);
      context.stroke();
      context.fillText(name, x(k), 18);
      context.fillText(format(low[k]), x(k), height - 12);
    });
  }

  function fillTable(summary) {
    const tbody = document.querySelector("#trials tbody");
    tbody.replaceChildren();
    for (const row of summary.table.rows) {
      const tr = document.createElement("tr");
      tr.dataset.number = format(row.number);
      const cells = [format(row.number), row.state, format(row.value), params(row.params), format(row.pruned_resource)];
      for (const cell of cells) {
        const td = document.createElement("td");
        td.textContent = cell;
        tr.appendChild(td);
      }
      const td = document.createElement("td");
      if (row.job_id) {
        const link = document.createElement("a");
        link.href = "/runs/" + encodeURIComponent(row.job_id);
        link.textContent = row.job_id;
        td.appendChild(link);
      }
      tr.appendChild(td);
      tbody.appendChild(tr);
    }
    const search = new URLSearchParams(query);
    const offset = parseInt(search.get("offset") || "0", 10);
    const size = summary.table.rows.length;
    const pageSize = parseInt(search.get("size") || "50", 10);
    text("trial-count", (size ? offset + 1 : 0) + "-" + (offset + size) + " of " + format(summary.table.total));
    const link = (id, to, show) => {
      const a = document.getElementById(id);
      a.hidden = !show;
      search.set("offset", String(to));
      a.href = base + "?" + search.toString();
    };
    link("trials-prev", Math.max(0, offset - pageSize), offset > 0);
    link("trials-next", offset + size, offset + size < summary.table.total);
  }

  function fillForm(summary) {
    const select = document.getElementById("param-select");
    if (select.options.length === 1) {
      for (const param of summary.params) {
        if (param.type === "categorical") continue;
        const option = document.createElement("option");
        option.value = param.name;
        option.textContent = param.name;
        select.appendChild(option);
      }
    }
    const search = new URLSearchParams(query);
    const form = document.getElementById("trial-filters");
    for (const name of ["state", "param", "min", "max", "sort", "order"]) {
      if (search.has(name)) form.elements[name].value = search.get(name);
    }
  }

  function render(summary) {
    for (const chart of plots.splice(0)) chart.destroy();
    document.getElementById("chart-history").replaceChildren();
    document.getElementById("chart-curves").replaceChildren();
    const study = summary.study;
    text("study-name", study.name);
    text("study-id", study.id);
    text("study-state", study.state);
    text("study-settings", study.algorithm + ", " + study.direction + " " + study.objective + ", pruner " + study.pruner);
    text("study-counts", Object.keys(summary.counts).sort().map((k) => k + " " + format(summary.counts[k])).join(", "));
    text("study-best", summary.best ? "best: trial #" + format(summary.best.number) + ", " + format(summary.best.value) + " (" + params(summary.best.params) + ")" : "no completed trial yet");
    drawHistory(summary);
    drawCurves(summary);
    drawImportance(summary);
    drawParallel(summary);
    drawParams(summary);
    fillForm(summary);
    fillTable(summary);
    document.body.dataset.rendered = String(performance.now());
  }

  function follow() {
    const source = new EventSource(base + "/events" + (query ? "?" + query : ""));
    source.addEventListener("summary", (e) => render(JSON.parse(e.data)));
    source.addEventListener("end", () => {
      text("stream-state", "finished");
      source.close();
    });
    source.addEventListener("failure", () => {
      text("stream-state", "stream failed");
      source.close();
    });
    text("stream-state", "live");
  }

  fetch(base + "/summary.json" + (query ? "?" + query : ""), { credentials: "same-origin" })
    .then((response) => {
      if (!response.ok) throw new Error("the study could not be loaded (" + response.status + ")");
      return response.json();
    })
    .then((summary) => {
      render(summary);
      if (summary.study.state === "running") follow();
      else text("stream-state", "finished");
    })
    .catch((error) => text("stream-state", error.message));
})();
