// Progressive enhancement only: every page works without this file.
"use strict";

// Ask before destructive submits (restore, delete).
document.addEventListener("submit", (event) => {
  const question = event.target.dataset && event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

// Count down the pending-confirm deadline.
const pending = document.getElementById("pending");
if (pending) {
  const deadline = Number(pending.dataset.deadline);
  const counter = pending.querySelector(".countdown");
  const tick = () => {
    const left = Math.max(0, Math.round((deadline - Date.now()) / 1000));
    counter.textContent = String(left);
    if (left === 0) setTimeout(() => window.location.reload(), 3000);
    else setTimeout(tick, 1000);
  };
  tick();
}

// Live dashboard over server-sent events.
const live = document.getElementById("live");
if (live && window.EventSource) {
  const lookup = (obj, path) => path.split(".").reduce((o, k) => (o == null ? o : o[k]), obj);
  const show = (value, format) => {
    if (value === null || value === undefined) return "–";
    if (format === "mib") return Math.round(value / 1048576) + " MiB";
    return String(value);
  };
  const source = new EventSource("/events");
  source.addEventListener("status", (event) => {
    const status = JSON.parse(event.data);
    live.querySelectorAll("[data-field]").forEach((el) => {
      el.textContent = show(lookup(status, el.dataset.field), el.dataset.format);
    });
    const body = document.querySelector("#services tbody");
    if (body) {
      body.replaceChildren(...status.services.map((s) => {
        const row = document.createElement("tr");
        const cells = [s.name, s.state, String(s.restarts), s.last_error || ""];
        cells.forEach((text, i) => {
          const cell = document.createElement("td");
          if (i === 1) {
            const span = document.createElement("span");
            span.className = "state " + text;
            span.textContent = text;
            cell.appendChild(span);
          } else cell.textContent = text;
          row.appendChild(cell);
        });
        return row;
      }));
    }
    const updated = document.getElementById("updated");
    if (updated) updated.textContent = new Date().toLocaleTimeString();
  });
}
