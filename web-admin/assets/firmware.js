// The firmware page: uploads the bundle as the raw body of POST /api/v1/firmware/bundle with
// a progress bar, then follows the install (GET /api/v1/firmware/install) until it ends.
// Without this file the form posts the bundle as multipart and the page reloads by hand.
"use strict";

const form = document.getElementById("upload-form");
const status = document.getElementById("install-status");
const bar = document.getElementById("install-progress");

const show = (text, percent) => {
  status.textContent = text;
  if (percent === null) bar.hidden = true;
  else { bar.hidden = false; bar.value = percent; bar.textContent = percent + " %"; }
};

const describe = (install) => {
  const version = install.version ? " " + install.version : "";
  switch (install.state) {
    case "receiving": return ["Receiving the bundle" + version + "…", install.progress];
    case "verifying": return ["Checking the signature and the payload" + version + "…", null];
    case "installing": return ["Installing" + version + " into slot " + (install.slot || "?") + ": " + install.progress + " %", install.progress];
    case "done": return ["Installed" + version + " into slot " + install.slot + ". Reboot to start it.", null];
    case "failed": return ["The install failed: " + (install.last_error || "no reason given"), null];
    default: return ["No install is running.", null];
  }
};

const follow = async () => {
  for (;;) {
    let install;
    try {
      const response = await fetch("/api/v1/firmware/install", { cache: "no-store" });
      if (!response.ok) throw new Error("HTTP " + response.status);
      install = await response.json();
    } catch (error) {
      show("Lost contact with the box (" + error.message + "); retrying…", null);
      await new Promise((r) => setTimeout(r, 2000));
      continue;
    }
    const [text, percent] = describe(install);
    show(text, percent);
    if (install.state === "done" || install.state === "failed" || install.state === "idle") {
      // The slot table and the history changed: show them.
      setTimeout(() => window.location.reload(), 1500);
      return;
    }
    await new Promise((r) => setTimeout(r, 1000));
  }
};

if (form && window.XMLHttpRequest) {
  form.addEventListener("submit", (event) => {
    const file = form.querySelector("input[type=file]").files[0];
    if (!file) return;
    event.preventDefault();
    const force = form.querySelector("input[name=force]");
    const button = form.querySelector("button[type=submit]");
    const request = new XMLHttpRequest();
    request.open("POST", "/api/v1/firmware/bundle" + (force && force.checked ? "?force=true" : ""));
    request.setRequestHeader("content-type", "application/octet-stream");
    request.upload.onprogress = (e) => {
      if (e.lengthComputable) {
        const percent = Math.floor((100 * e.loaded) / e.total);
        show("Uploading " + file.name + ": " + percent + " % of " + (file.size / 1e6).toFixed(1) + " MB", percent);
      }
    };
    request.onload = () => {
      button.disabled = false;
      let answer = {};
      try { answer = JSON.parse(request.responseText); } catch (_) { /* not JSON */ }
      if (request.status === 202) {
        show("Accepted " + answer.version + "; installing…", 0);
        follow();
      } else {
        show("Not installed: " + (answer.error || "HTTP " + request.status), null);
      }
    };
    request.onerror = () => { button.disabled = false; show("The upload broke off; nothing was installed.", null); };
    button.disabled = true;
    show("Uploading " + file.name + "…", 0);
    request.send(file);
  });
}

// Opened while an install runs (from another tab, or after the fallback form): follow it.
if (status && ["receiving", "verifying", "installing"].includes(status.dataset.state)) follow();
