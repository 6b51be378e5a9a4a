// The labelling page: the keyboard picks an image and assigns a class; every label is recorded
// through the dashboard (RecordFeedback, the same checks as the CLI). Text only, no markup.
"use strict";

(function () {
  const root = document.getElementById("labelling");
  if (!root) return;
  const batchId = root.dataset.batchId;
  const csrf = root.dataset.csrf;
  const items = Array.from(document.querySelectorAll("#candidates .candidate"));
  const classes = Array.from(document.querySelectorAll(".class-button")).map((b) => b.dataset.label);
  const message = document.getElementById("label-message");
  const history = []; // [sample, label before] of each change, for undo
  let current = 0;
  let busy = false;

  function say(text, kind) {
    message.textContent = text;
    message.className = "message " + (kind || "");
  }

  function select(index) {
    if (!items.length) return;
    current = Math.max(0, Math.min(items.length - 1, index));
    items.forEach((item, i) => item.classList.toggle("selected", i === current));
    items[current].focus();
  }

  function progress() {
    const done = items.filter((item) => item.querySelector(".label").textContent).length;
    document.getElementById("progress").textContent = done + " of " + items.length + " labelled";
  }

  async function record(item, label, overwrite, undoing) {
    if (busy) return;
    busy = true;
    const sample = item.dataset.sampleId;
    const before = item.querySelector(".label").textContent;
    const body = new URLSearchParams({ csrf: csrf, sample_id: sample, label: label, overwrite: overwrite ? "1" : "0" });
    try {
      const response = await fetch("/labelling/" + encodeURIComponent(batchId) + "/label", {
        method: "POST",
        body: body,
        credentials: "same-origin",
      });
      const answer = await response.json();
      if (!response.ok) {
        say("refused: " + answer.error, "error");
        return;
      }
      item.querySelector(".label").textContent = answer.label;
      if (answer.changed && !undoing) history.push([item, before]);
      say((answer.changed ? "recorded " : "unchanged, already ") + answer.label + " for " + sample, "ok");
      progress();
      if (!undoing) select(current + 1);
    } catch (error) {
      say("could not record the label: " + error.message, "error");
    } finally {
      busy = false;
    }
  }

  function undo() {
    const last = history.pop();
    if (!last) return say("nothing to undo", "error");
    const [item, before] = last;
    if (!before) {
      history.push(last);
      return say("a first label cannot be removed (feedback is recorded, not deleted); press Shift and a number to replace it", "error");
    }
    select(items.indexOf(item));
    record(item, before, true, true);
  }

  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement) return;
    const key = event.key;
    const digit = /^Digit([1-9])$/.exec(event.code);
    if (digit) {
      const label = classes[parseInt(digit[1], 10) - 1];
      if (label !== undefined) record(items[current], label, event.shiftKey, false);
    } else if (key === "j" || key === "ArrowDown") select(current + 1);
    else if (key === "k" || key === "ArrowUp") select(current - 1);
    else if (key === "u") undo();
    else return;
    event.preventDefault();
  });
  document.querySelectorAll(".class-button").forEach((button) =>
    button.addEventListener("click", () => record(items[current], button.dataset.label, false, false))
  );
  items.forEach((item, i) => item.addEventListener("click", () => select(i)));
  select(0);
})();
