// The cluster page, kept current by WatchCluster snapshots as server-sent events.
"use strict";

(function () {
  function fill(selector, rows) {
    const tbody = document.querySelector(selector);
    if (!tbody) return;
    tbody.replaceChildren();
    for (const row of rows) {
      const tr = document.createElement("tr");
      for (const cell of row) {
        const td = document.createElement("td");
        td.textContent = String(cell);
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
  }

  const source = new EventSource("/cluster/events");
  source.addEventListener("snapshot", (e) => {
    const data = JSON.parse(e.data);
    document.getElementById("queue-depth").textContent = data.queue_depth;
    document.getElementById("cluster-text").textContent = data.summary;
    fill("#agents tbody", data.agents);
    fill("#active-jobs tbody", data.jobs);
  });
  source.addEventListener("failure", () => source.close());
})();
