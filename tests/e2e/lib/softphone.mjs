// The JsSIP softphone the browser tests run in headless Chromium, and what
// they check of a call: shared by the loopback tests and the NAT test.
import assert from "node:assert/strict";
import http from "node:http";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRequire } from "node:module";
import { readWav, toneShare, writeWav } from "./baresip.mjs";

const require = createRequire(import.meta.url);
const esbuild = require("esbuild");

/** JsSIP bundled for the browser (the npm package ships CommonJS only). */
export async function jssipBundle() {
  const result = await esbuild.build({
    entryPoints: [require.resolve("jssip")], bundle: true, format: "iife", globalName: "JsSIP", write: false, logLevel: "silent",
  });
  return result.outputFiles[0].text;
}

/** A 16-bit mono WAV file of a sine tone, for Chromium's fake microphone. */
export function toneWav(path, frequency, seconds = 10, rate = 48000) {
  writeWav(path, Array.from({ length: rate * seconds }, (_, i) => Math.round(8000 * Math.sin((2 * Math.PI * frequency * i) / rate))), rate);
}

/** The page: JsSIP and the softphone helpers. */
function softphonePage() {
  return `<!doctype html><title>softphone</title><script src="/jssip.js"></script><script>${SOFTPHONE}</script><audio id=remote autoplay></audio>`;
}

/**
 * Serves the softphone page (and the JsSIP bundle) on host:port, with a
 * 440 Hz tone file in a fresh directory for Chromium's fake microphone.
 * Returns {server, tone}.
 */
export async function serveSoftphone(host, port) {
  const tone = join(mkdtempSync(join(tmpdir(), "softphone-")), "tone-440.wav");
  toneWav(tone, 440);
  const bundle = await jssipBundle();
  const server = http.createServer((req, res) => {
    if (req.url === "/jssip.js") { res.writeHead(200, { "content-type": "text/javascript" }); return res.end(bundle); }
    res.writeHead(200, { "content-type": "text/html" });
    res.end(softphonePage());
  });
  await new Promise((r) => server.listen(port, host, r));
  return { server, tone };
}

/** Runs in the page: a JsSIP softphone with helpers the tests call. */
export const SOFTPHONE = `
// Keeps only Opus and telephone events in an SDP's audio section: a browser
// app that speaks Opus alone, so the box must transcode.
function onlyOpus(sdp) {
  const lines = sdp.split("\\r\\n");
  const keep = lines.map((l) => /^a=rtpmap:(\\d+) (opus|telephone-event)\\//i.exec(l)?.[1]).filter(Boolean);
  return lines
    .filter((l) => { const pt = /^a=(?:rtpmap|fmtp|rtcp-fb):(\\d+)/.exec(l)?.[1]; return !pt || keep.includes(pt); })
    .map((l) => (l.startsWith("m=audio") ? l.split(" ").slice(0, 3).concat(keep).join(" ") : l))
    .join("\\r\\n");
}
window.softphone = {
  opusOnly: false,
  // RTCPeerConnection settings (e.g. the box's TURN server) for calls and answers.
  pcConfig: {},
  munge(e) { if (e.originator === "local" && softphone.opusOnly) e.sdp = onlyOpus(e.sdp); },
  async register(wss, user, password, domain) {
    this.ua = new JsSIP.UA({ sockets: [new JsSIP.WebSocketInterface(wss)], uri: "sip:" + user + "@" + domain, password, register: true });
    this.incoming = new Promise((resolve) => this.ua.on("newRTCSession", (e) => { if (e.originator === "remote") resolve(e.session); }));
    await new Promise((resolve, reject) => {
      this.ua.on("registered", resolve);
      this.ua.on("registrationFailed", (e) => reject(new Error("registration failed: " + e.cause)));
      this.ua.start();
    });
  },
  async call(target) {
    this.session = this.ua.call(target, { mediaConstraints: { audio: true, video: false }, pcConfig: this.pcConfig, eventHandlers: { sdp: this.munge } });
    await this.confirmed(this.session);
  },
  async answer() {
    const session = await Promise.race([this.incoming, new Promise((_, reject) => setTimeout(() => reject(new Error("no incoming call in 15 s")), 15000))]);
    this.session = session;
    session.on("sdp", this.munge);
    session.answer({ mediaConstraints: { audio: true, video: false }, pcConfig: this.pcConfig });
    await this.confirmed(session);
  },
  confirmed(session) {
    return new Promise((resolve, reject) => {
      session.on("confirmed", resolve);
      session.on("failed", (e) => reject(new Error("call failed: " + e.cause + " " + (e.message?.status_code ?? "") + " " + (e.message?.getHeader?.("Warning") ?? ""))));
      setTimeout(() => reject(new Error("call not confirmed in 15 s")), 15000);
    });
  },
  // Samples the call twice: RTP counters, audio energy, codec, and the loudest frequency heard.
  async measure() {
    const pc = this.session.connection;
    const remote = new MediaStream(pc.getReceivers().map((r) => r.track));
    document.getElementById("remote").srcObject = remote;
    // Chromium feeds WebAudio from a remote stream only while a media element plays it too.
    const audio = new AudioContext();
    const analyser = audio.createAnalyser();
    analyser.fftSize = 4096;
    audio.createMediaStreamSource(remote).connect(analyser);
    const sample = async () => {
      const stats = await pc.getStats();
      const out = {};
      stats.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "audio") { out.packetsReceived = s.packetsReceived; out.energy = s.totalAudioEnergy; out.codecId = s.codecId; }
        if (s.type === "outbound-rtp" && s.kind === "audio") out.packetsSent = s.packetsSent;
      });
      if (out.codecId) out.codec = stats.get(out.codecId)?.mimeType;
      const pair = [...stats.values()].find((s) => s.type === "candidate-pair" && s.nominated && s.state === "succeeded");
      out.pair = Boolean(pair);
      out.localType = pair && stats.get(pair.localCandidateId)?.candidateType;
      return out;
    };
    await new Promise((r) => setTimeout(r, 1500));
    const first = await sample();
    await new Promise((r) => setTimeout(r, 3000));
    const second = await sample();
    const bins = new Float32Array(analyser.frequencyBinCount);
    analyser.getFloatFrequencyData(bins);
    const loudest = bins.reduce((best, v, i) => (v > bins[best] ? i : best), 0);
    second.dominantHz = Math.round((loudest * audio.sampleRate) / analyser.fftSize);
    return { first, second };
  },
  // An ICE restart (RFC 8445 §9) as a re-INVITE; returns the ICE usernames of both ends before and after.
  async restartIce() {
    const pc = this.session.connection;
    const ufrags = () => ({ local: /a=ice-ufrag:(\\S+)/.exec(pc.localDescription.sdp)?.[1], remote: /a=ice-ufrag:(\\S+)/.exec(pc.remoteDescription.sdp)?.[1] });
    const before = ufrags();
    await new Promise((resolve, reject) => {
      setTimeout(() => reject(new Error("ICE restart not answered in 10 s")), 10000);
      const started = this.session.renegotiate({ rtcOfferConstraints: { iceRestart: true } }, resolve);
      if (!started) reject(new Error("JsSIP could not start the renegotiation"));
    });
    return { before, after: ufrags() };
  },
  // RFC 4733 events from the browser's RTCDTMFSender ("RFC2833"), or SIP INFO ("INFO", JsSIP's default).
  async sendDtmf(tones, transportType = "RFC2833") {
    // JsSIP reports each INFO it sends; RTCDTMFSender tones are only timed.
    let count = 0;
    const infos = new Promise((resolve) => this.session.on("newDTMF", (e) => { if (e.originator === "local" && ++count === tones.length) resolve(); }));
    this.session.sendDTMF(tones, { transportType, duration: 160, interToneGap: 100 });
    const timed = new Promise((r) => setTimeout(r, 400 + tones.length * 300));
    await (transportType === "INFO" ? Promise.race([infos, new Promise((r) => setTimeout(r, 5000))]) : timed);
    // The last key's end packets: the box sends a key's events over its duration (and
    // the three ends 20 ms apart) once the INFO reached it.
    await new Promise((r) => setTimeout(r, 1200));
  },
  async hangUp() {
    this.session.terminate();
    await new Promise((r) => setTimeout(r, 500));
  },
};
`;

/** What both ends heard: the browser's RTP statistics and spectrum, and baresip's recording. */
export async function checkAudioBothWays(result, phone, codec) {
  console.log(JSON.stringify(result));
  assert.ok(result.second.pair, "ICE selected a pair with the box");
  assert.equal(result.second.codec, codec);
  assert.ok(result.second.packetsReceived > result.first.packetsReceived + 50, "the browser keeps receiving RTP");
  assert.ok(result.second.energy > result.first.energy, "what the browser receives is not silence");
  assert.ok(result.second.packetsSent > result.first.packetsSent + 50, "the browser keeps sending RTP");
  assert.ok(Math.abs(result.second.dominantHz - 1000) < 30, `the browser hears baresip's 1 kHz tone (loudest: ${result.second.dominantHz} Hz)`);
  await phone.stop();
  const heard = readWav(phone.heard());
  assert.ok(heard && heard.samples.length > 8000, `baresip recorded the call (${heard?.samples.length ?? 0} samples)`);
  // Skip the first half second (ringing, DTLS); the browser's 440 Hz tone dominates what baresip heard.
  const voiced = heard.samples.subarray(Math.floor(heard.sampleRate / 2));
  const share = toneShare(voiced, heard.sampleRate, 440);
  console.log(`440 Hz share of what baresip heard: ${share.toFixed(2)}`);
  assert.ok(share > 0.5, `440 Hz is ${(share * 100).toFixed(0)}% of what baresip heard`);
}
