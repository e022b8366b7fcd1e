// Live camera previews on the devices page: a WHEP viewer (POST /whep/<camera> with the
// admin session, RFC 9725) per camera, started and stopped by its button. Without this
// file the page still lists every device and links each camera's snapshot.
"use strict";

for (const button of document.querySelectorAll(".preview-button")) {
  const video = document.getElementById(button.dataset.video);
  const status = button.closest(".camera").querySelector(".preview-state");
  let session = null;

  const stop = async () => {
    const { pc, location } = session;
    session = null;
    pc.close();
    video.srcObject = null;
    video.hidden = true;
    button.textContent = "Live preview";
    button.setAttribute("aria-pressed", "false");
    status.textContent = "";
    // The box ends the viewer (and its encoder when nobody else watches).
    if (location) await fetch(location, { method: "DELETE" }).catch(() => {});
  };

  const start = async () => {
    const pc = new RTCPeerConnection();
    session = { pc, location: null };
    pc.addTransceiver("video", { direction: "recvonly" });
    pc.ontrack = (event) => {
      video.srcObject = new MediaStream([event.track]);
      video.hidden = false;
      video.play().catch(() => {});
    };
    pc.onconnectionstatechange = () => {
      if (pc.connectionState === "connected") status.textContent = "Live.";
      if (pc.connectionState === "failed") status.textContent = "The preview lost its connection to the box.";
    };
    button.textContent = "Stop preview";
    button.setAttribute("aria-pressed", "true");
    status.textContent = "Connecting…";
    try {
      await pc.setLocalDescription(await pc.createOffer());
      const response = await fetch(button.dataset.whep, {
        method: "POST", headers: { "content-type": "application/sdp" }, body: pc.localDescription.sdp,
      });
      const text = await response.text();
      if (response.status !== 201) {
        let reason = text;
        try { reason = JSON.parse(text).error || text; } catch (_) { /* plain text */ }
        throw new Error(reason);
      }
      session.location = new URL(response.headers.get("location"), window.location.href).href;
      await pc.setRemoteDescription({ type: "answer", sdp: text });
    } catch (error) {
      if (session) await stop();
      status.textContent = "No preview: " + (error.message || error);
    }
  };

  button.hidden = !window.RTCPeerConnection;
  button.addEventListener("click", () => (session ? stop() : start()));
  window.addEventListener("pagehide", () => { if (session) stop(); });
}
