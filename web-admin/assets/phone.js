// The box's browser phone (/phone): JsSIP over wss://<this host>/sip, the SIP user's own
// extension and password (digest on /sip authenticates; the page itself grants nothing).
// Loaded after the vendored JsSIP bundle (both `defer`, so in document order).
"use strict";

(() => {
  const root = document.getElementById("phone");
  if (!root) return;
  const $ = (id) => document.getElementById(id);
  const domain = root.dataset.domain || location.hostname;
  const EXTENSION_KEY = "branchgate.phone.extension";
  const el = {
    reg: $("reg-state"), error: $("phone-error"), loginForm: $("login-form"), extension: $("extension"),
    password: $("sip-password"), loginButton: $("login-button"), ui: $("phone-ui"), me: $("me"),
    logout: $("logout-button"), incoming: $("incoming"), incomingFrom: $("incoming-from"),
    answer: $("answer-button"), decline: $("decline-button"), dialForm: $("dial-form"), number: $("number"),
    call: $("call-button"), hangup: $("hangup-button"), hold: $("hold-button"), mute: $("mute-button"),
    callState: $("call-state"), dtmf: $("dtmf-sent"), stats: $("stats"), audio: $("remote-audio"),
  };

  if (!window.JsSIP || !window.RTCPeerConnection) {
    showError("This browser cannot run the phone (no WebRTC or the SIP library did not load).");
    el.loginButton.disabled = true;
    return;
  }

  let ua = null;
  let everRegistered = false;
  let session = null;
  let established = false;
  let held = false;
  let muted = false;
  let statsTimer = null;
  let startedAt = 0;
  let peer = "";
  let sentKeys = "";
  let audioContext = null;
  let tone = null;

  // Only the extension is remembered; the password never leaves this page's memory.
  try { el.extension.value = localStorage.getItem(EXTENSION_KEY) || ""; } catch { /* storage off */ }
  if (el.extension.value) el.password.focus(); else el.extension.focus();

  function showError(text) {
    el.error.textContent = text;
    el.error.hidden = !text;
  }

  function setReg(state, text) {
    el.reg.dataset.state = state;
    el.reg.textContent = text;
  }

  function setCall(state, text) {
    el.callState.dataset.state = state;
    el.callState.textContent = text;
  }

  function statusText(message) {
    if (!message || !message.status_code) return "";
    return ` (${message.status_code} ${message.reason_phrase || ""})`.replace(" )", ")");
  }

  // ----- registration ----------------------------------------------------------

  el.loginForm.addEventListener("submit", (event) => {
    event.preventDefault();
    showError("");
    const extension = el.extension.value.trim();
    const password = el.password.value;
    el.password.value = "";
    if (!/^[A-Za-z0-9._+-]{1,64}$/.test(extension)) {
      showError("Enter your extension (digits or letters, as in SIP users).");
      return;
    }
    if (!password) {
      showError("Enter the SIP password of your extension.");
      return;
    }
    try { localStorage.setItem(EXTENSION_KEY, extension); } catch { /* storage off */ }
    // Created on this click: browsers let audio start only after a user gesture (ring tone).
    if (!audioContext && window.AudioContext) audioContext = new AudioContext();
    start(extension, password);
  });

  /**
   * The box's TURN server as ICE servers (short-lived credentials minted for this SIP user),
   * for a browser whose network lets no UDP through; none when the box offers no TURN.
   */
  let iceServers = [];
  /** How long ICE gathering may go on after the first candidate (see `handlers`). */
  const ICE_GATHERING_MS = 1500;
  async function loadIceServers(extension, password) {
    try {
      const response = await fetch("/phone/ice-servers", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ username: extension, password }),
      });
      if (response.ok) iceServers = (await response.json()).iceServers || [];
    } catch {
      iceServers = [];
    }
  }

  function start(extension, password) {
    stop();
    everRegistered = false;
    el.loginButton.disabled = true;
    setReg("connecting", "Connecting…");
    let configuration;
    try {
      configuration = {
        sockets: [new JsSIP.WebSocketInterface(`wss://${location.host}/sip`)],
        uri: `sip:${extension}@${domain}`,
        password,
        register: true,
        // The box neither asks for nor refreshes session timers; on browser calls it takes
        // re-INVITEs that change the direction (hold) or restart ICE and answers others with 488, which
        // JsSIP would take as a reason to end the call.
        session_timers: false,
        user_agent: "branchgate-phone (JsSIP)",
      };
      ua = new JsSIP.UA(configuration);
    } catch (e) {
      el.loginButton.disabled = false;
      setReg("failed", "Not registered");
      showError(`Cannot use these settings: ${e.message || e}`);
      return;
    }
    const me = ua;
    ua.on("connected", () => { if (ua === me) setReg("connecting", "Registering…"); });
    ua.on("disconnected", () => {
      if (ua !== me) return;
      if (!everRegistered) {
        stop();
        showError(`Cannot reach the box's SIP service (wss://${location.host}/sip). Check that SIP is running.`);
      } else {
        setReg("connecting", "Connection lost, reconnecting…");
      }
    });
    ua.on("registered", () => {
      if (ua !== me) return;
      // The credentials are right: ask for the box's TURN (once per login), then forget them.
      if (!everRegistered) loadIceServers(extension, password);
      everRegistered = true;
      el.loginButton.disabled = false;
      setReg("registered", `Registered as ${extension}`);
      el.me.textContent = `${extension}@${domain}`;
      el.loginForm.hidden = true;
      el.ui.hidden = false;
      if (!session) el.number.focus();
    });
    ua.on("unregistered", () => { if (ua === me) setReg("offline", "Not registered"); });
    ua.on("registrationFailed", (e) => {
      if (ua !== me) return;
      const auth = e.cause === JsSIP.C.causes.AUTHENTICATION_ERROR || e.cause === JsSIP.C.causes.REJECTED;
      stop();
      showError(auth
        ? "Wrong extension or SIP password."
        : `Registration failed: ${e.cause}${statusText(e.response)}.`);
    });
    ua.on("newRTCSession", (e) => {
      if (ua !== me || e.originator !== "remote") return;
      incoming(e.session);
    });
    ua.start();
  }

  /** Ends the user agent (unregisters when connected) and shows the login form. */
  function stop() {
    endCall();
    iceServers = [];
    if (ua) {
      const old = ua;
      ua = null;
      try { old.stop(); } catch { /* already stopped */ }
    }
    el.loginButton.disabled = false;
    el.ui.hidden = true;
    el.loginForm.hidden = false;
    setReg("offline", "Not registered");
  }

  el.logout.addEventListener("click", () => {
    showError("");
    stop();
    el.password.focus();
  });
  window.addEventListener("pagehide", () => { if (ua) ua.stop(); });

  // ----- calls -----------------------------------------------------------------

  function target(number) {
    if (number.includes("@")) return number.startsWith("sip:") ? number : `sip:${number}`;
    return `sip:${number}@${domain}`;
  }

  el.dialForm.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!ua || session) return;
    showError("");
    const number = el.number.value.trim();
    if (!/^[A-Za-z0-9*#+._-]+(@[A-Za-z0-9.:-]+)?$/.test(number.replace(/^sip:/, ""))) {
      showError(number ? "That is not a number or SIP address this phone can dial." : "Enter a number to call.");
      el.number.focus();
      return;
    }
    setCall("calling", `Calling ${number}…`);
    try {
      const options = {
        mediaConstraints: { audio: true, video: false },
        // The box answers with its own candidates (ICE-lite), enough on the branch LAN; its
        // TURN (when offered) is for browsers whose network blocks UDP.
        pcConfig: { iceServers },
        eventHandlers: handlers(number),
      };
      session = ua.call(target(number), options);
      callControls(true);
    } catch (e) {
      session = null;
      setCall("idle", "Ready");
      showError(`Cannot call ${number}: ${e.message || e}`);
    }
  });

  function incoming(newSession) {
    if (session) {
      // One call at a time: a second caller hears busy.
      newSession.terminate({ status_code: 486, reason_phrase: "Busy Here" });
      return;
    }
    session = newSession;
    const identity = newSession.remote_identity;
    const from = (identity && (identity.display_name || identity.uri.user)) || "unknown";
    const h = handlers(from);
    for (const [name, fn] of Object.entries(h)) newSession.on(name, fn);
    el.incomingFrom.textContent = from;
    el.incoming.hidden = false;
    setCall("incoming", `Incoming call from ${from}`);
    callControls(true);
    ring("incoming");
    el.answer.focus();
  }

  el.answer.addEventListener("click", () => {
    if (!session || established) return;
    stopTone();
    el.incoming.hidden = true;
    setCall("calling", "Answering…");
    session.answer({ mediaConstraints: { audio: true, video: false }, pcConfig: { iceServers } });
  });

  el.decline.addEventListener("click", () => {
    if (!session || established) return;
    session.terminate({ status_code: 603, reason_phrase: "Decline" });
  });

  el.hangup.addEventListener("click", () => {
    if (session) session.terminate();
  });

  /** The session's event handlers; `who` names the other side in messages. */
  function handlers(who) {
    peer = who;
    let gathering = null;
    return {
      // JsSIP sends the offer or answer once ICE gathering completes; a TURN server that cannot
      // be reached from this network would hold that for tens of seconds. The box is ICE-lite
      // and needs no trickle: what was gathered within a moment of the first candidate is enough.
      icecandidate: (e) => {
        if (!gathering) gathering = setTimeout(e.ready, ICE_GATHERING_MS);
      },
      peerconnection: (e) => {
        const pc = e.peerconnection;
        pc.addEventListener("track", (t) => {
          el.audio.srcObject = t.streams[0] || new MediaStream([t.track]);
        });
        // A changed network (Wi-Fi to cable, a new address) fails the ICE pair; an ICE restart
        // (a re-INVITE the box answers with new credentials) finds a new one and keeps the call.
        pc.addEventListener("iceconnectionstatechange", () => {
          if (pc.iceConnectionState === "failed" && session && session.isEstablished()) {
            session.renegotiate({ rtcOfferConstraints: { iceRestart: true } });
          }
        });
      },
      progress: (e) => {
        if (e.originator === "remote") {
          setCall("ringing", `Ringing ${who}…`);
          ring("ringback");
        }
      },
      accepted: () => stopTone(),
      hold: (e) => { if (e.originator === "local") showHold(true); },
      unhold: (e) => { if (e.originator === "local") showHold(false); },
      confirmed: () => {
        established = true;
        startedAt = Date.now();
        el.incoming.hidden = true;
        setCall("in-call", `In call with ${who}`);
        el.hold.disabled = false;
        el.mute.disabled = false;
        el.stats.hidden = false;
        statsTimer = setInterval(updateStats, 1000);
        updateStats();
      },
      failed: (e) => {
        const C = JsSIP.C.causes;
        let text;
        if (e.cause === C.CANCELED) text = e.originator === "remote" ? `Missed call from ${who}` : "Call cancelled";
        else if (e.cause === C.REJECTED && e.originator === "local") text = "Call declined";
        else if (e.cause === C.USER_DENIED_MEDIA_ACCESS) text = "Call failed: the microphone is not available or not allowed";
        else text = `Call failed: ${e.cause}${statusText(e.message)}`;
        endCall();
        setCall("ended", text);
        if (text.startsWith("Call failed")) showError(`${text}.`);
      },
      ended: (e) => {
        endCall();
        setCall("ended", e.originator === "remote" ? `Call ended by ${who}` : "Call ended");
      },
    };
  }

  function callControls(active) {
    el.call.disabled = active;
    el.hangup.disabled = !active;
    el.hold.disabled = true;
    el.mute.disabled = true;
  }

  function endCall() {
    stopTone();
    if (statsTimer) clearInterval(statsTimer);
    statsTimer = null;
    if (session && !session.isEnded()) {
      try { session.terminate(); } catch { /* already ending */ }
    }
    session = null;
    established = false;
    held = false;
    muted = false;
    el.hold.setAttribute("aria-pressed", "false");
    el.hold.textContent = "Hold";
    el.mute.setAttribute("aria-pressed", "false");
    el.mute.textContent = "Mute";
    el.audio.muted = false;
    el.audio.srcObject = null;
    el.incoming.hidden = true;
    sentKeys = "";
    el.dtmf.textContent = "";
    callControls(false);
  }

  // Hold is a SIP hold: a re-INVITE with a=sendonly, which the box passes on to the far
  // phone as a plain re-INVITE (it plays music on hold or goes quiet). While held the
  // microphone is silenced and what arrives is not played as well.
  function applyTrackState() {
    const pc = session && session.connection;
    if (pc) pc.getSenders().forEach((s) => { if (s.track) s.track.enabled = !(held || muted); });
    el.audio.muted = held;
  }

  function showHold(now) {
    held = now;
    applyTrackState();
    el.hold.setAttribute("aria-pressed", String(held));
    el.hold.textContent = held ? "Resume" : "Hold";
    setCall(held ? "held" : "in-call", held ? `On hold: ${peer}` : `In call with ${peer}`);
  }

  el.hold.addEventListener("click", () => {
    if (!established || !session) return;
    // JsSIP answers false when a renegotiation is already under way; the events below
    // show the state once the far side agreed.
    if (held) session.unhold(); else session.hold();
  });

  el.mute.addEventListener("click", () => {
    if (!established) return;
    muted = !muted;
    applyTrackState();
    el.mute.setAttribute("aria-pressed", String(muted));
    el.mute.textContent = muted ? "Unmute" : "Mute";
  });

  // The dial pad types the number, or sends RFC 4733 DTMF during a call.
  root.querySelector(".keypad").addEventListener("click", (event) => {
    const button = event.target.closest("button[data-key]");
    if (!button) return;
    const key = button.dataset.key;
    if (established && session) {
      try {
        session.sendDTMF(key, { transportType: "RFC2833", duration: 160, interToneGap: 70 });
        sentKeys += key;
        el.dtmf.textContent = `Sent: ${sentKeys}`;
      } catch (e) {
        showError(`Could not send ${key}: ${e.message || e}`);
      }
    } else {
      el.number.value += key;
      el.number.focus();
    }
  });

  // ----- statistics ------------------------------------------------------------

  const statCells = {};
  root.querySelectorAll("[data-stat]").forEach((cell) => { statCells[cell.dataset.stat] = cell; });
  function setStat(name, text, value) {
    const cell = statCells[name];
    if (!cell) return;
    cell.textContent = text;
    if (value !== undefined) cell.dataset.value = String(value);
  }

  async function updateStats() {
    const pc = session && session.connection;
    if (!pc) return;
    const seconds = Math.floor((Date.now() - startedAt) / 1000);
    setStat("duration", `${Math.floor(seconds / 60)}:${String(seconds % 60).padStart(2, "0")}`, seconds);
    let report;
    try { report = await pc.getStats(); } catch { return; }
    let inbound = null, outbound = null, remoteInbound = null, pair = null;
    report.forEach((s) => {
      if (s.kind !== undefined && s.kind !== "audio") return;
      if (s.type === "inbound-rtp") inbound = s;
      else if (s.type === "outbound-rtp") outbound = s;
      else if (s.type === "remote-inbound-rtp") remoteInbound = s;
      else if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
    });
    const codec = inbound && inbound.codecId && report.get(inbound.codecId);
    if (codec) setStat("codec", `${codec.mimeType.replace(/^audio\//, "")} ${codec.clockRate / 1000} kHz`);
    if (outbound) setStat("sent", `${outbound.packetsSent} packets`, outbound.packetsSent);
    if (inbound) {
      setStat("received", `${inbound.packetsReceived} packets`, inbound.packetsReceived);
      const lost = Math.max(0, inbound.packetsLost || 0);
      const total = inbound.packetsReceived + lost;
      const percent = total ? (100 * lost) / total : 0;
      setStat("loss", `${percent.toFixed(1)} % (${lost})`, percent);
      if (inbound.jitter !== undefined) setStat("jitter", `${Math.round(inbound.jitter * 1000)} ms`, inbound.jitter);
    }
    const rtt = (remoteInbound && remoteInbound.roundTripTime) ?? (pair && pair.currentRoundTripTime);
    if (rtt !== undefined && rtt !== null) setStat("rtt", `${Math.round(rtt * 1000)} ms`, rtt);
  }

  // ----- tones (WebAudio, nothing to download) -----------------------------------

  // Incoming: 440 + 480 Hz, 2 s on, 4 s off (the North American ring); ringback for an
  // outgoing call the other side rings: 425 Hz, 1 s on, 4 s off (ETSI), quieter.
  function ring(kind) {
    stopTone();
    if (!audioContext) return;
    if (audioContext.state === "suspended") audioContext.resume().catch(() => {});
    const [freqs, on, period, level] = kind === "incoming" ? [[440, 480], 2, 6, 0.15] : [[425], 1, 5, 0.06];
    const gain = audioContext.createGain();
    gain.gain.value = 0;
    gain.connect(audioContext.destination);
    const oscillators = freqs.map((f) => {
      const o = audioContext.createOscillator();
      o.frequency.value = f;
      o.connect(gain);
      o.start();
      return o;
    });
    const cycle = () => {
      const t = audioContext.currentTime;
      gain.gain.setValueAtTime(level, t);
      gain.gain.setValueAtTime(0, t + on);
    };
    cycle();
    const timer = setInterval(cycle, period * 1000);
    tone = { gain, oscillators, timer };
  }

  function stopTone() {
    if (!tone) return;
    clearInterval(tone.timer);
    tone.oscillators.forEach((o) => { try { o.stop(); } catch { /* stopped */ } });
    tone.gain.disconnect();
    tone = null;
  }
})();
