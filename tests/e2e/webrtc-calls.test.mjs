// WebRTC <-> SIP through the box: JsSIP (npm) in headless Chromium registers
// over WSS and calls baresip (Debian), a plain SIP phone registered over UDP.
// The box terminates ICE/DTLS-SRTP on the browser side and speaks plain RTP
// to baresip. Chromium sends a 440 Hz tone, baresip a 1 kHz one: each side
// must hear the other's.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createRequire } from "node:module";
import { chromium } from "playwright-core";
import { startBox, freePort, Api, CHROMIUM_ARGS, ARTIFACTS } from "./lib/box.mjs";
import { startBaresip, readWav, toneShare } from "./lib/baresip.mjs";

const require = createRequire(import.meta.url);
const esbuild = require("esbuild");

/** JsSIP bundled for the browser (the npm package ships CommonJS only). */
async function jssipBundle() {
  const result = await esbuild.build({
    entryPoints: [require.resolve("jssip")], bundle: true, format: "iife", globalName: "JsSIP", write: false, logLevel: "silent",
  });
  return result.outputFiles[0].text;
}

/** A 16-bit mono WAV file of a sine tone, for Chromium's fake microphone. */
function toneWav(path, frequency, seconds = 10, rate = 48000) {
  const samples = rate * seconds;
  const data = Buffer.alloc(44 + samples * 2);
  data.write("RIFF", 0); data.writeUInt32LE(36 + samples * 2, 4); data.write("WAVE", 8);
  data.write("fmt ", 12); data.writeUInt32LE(16, 16); data.writeUInt16LE(1, 20); data.writeUInt16LE(1, 22);
  data.writeUInt32LE(rate, 24); data.writeUInt32LE(rate * 2, 28); data.writeUInt16LE(2, 32); data.writeUInt16LE(16, 34);
  data.write("data", 36); data.writeUInt32LE(samples * 2, 40);
  for (let i = 0; i < samples; i++) data.writeInt16LE(Math.round(8000 * Math.sin((2 * Math.PI * frequency * i) / rate)), 44 + 2 * i);
  writeFileSync(path, data);
}

const DOMAIN = "branch.example";

/** Runs in the page: a JsSIP softphone with helpers the tests call. */
const SOFTPHONE = `
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
    this.session = this.ua.call(target, { mediaConstraints: { audio: true, video: false }, eventHandlers: { sdp: this.munge } });
    await this.confirmed(this.session);
  },
  async answer() {
    const session = await Promise.race([this.incoming, new Promise((_, reject) => setTimeout(() => reject(new Error("no incoming call in 15 s")), 15000))]);
    this.session = session;
    session.on("sdp", this.munge);
    session.answer({ mediaConstraints: { audio: true, video: false } });
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
      out.pair = [...stats.values()].some((s) => s.type === "candidate-pair" && s.nominated && s.state === "succeeded");
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
  // RFC 4733 events from the browser's RTCDTMFSender (JsSIP sends SIP INFO unless told otherwise).
  async sendDtmf(tones) {
    this.session.sendDTMF(tones, { transportType: "RFC2833", duration: 160, interToneGap: 100 });
    await new Promise((r) => setTimeout(r, 400 + tones.length * 300));
  },
  async hangUp() {
    this.session.terminate();
    await new Promise((r) => setTimeout(r, 500));
  },
};
`;

/**
 * A box with users 1001 (the browser) and 1002 (baresip), a page with JsSIP
 * in headless Chromium sending a 440 Hz tone, and baresip sending 1 kHz.
 */
async function lab(t) {
  const pagePort = await freePort();
  const origin = `http://127.0.0.1:${pagePort}`;
  const box = await startBox({
    provision: {
      admin: { password: "installer-secret-1" },
      sip: {
        domain: DOMAIN, ws_allowed_origins: [origin],
        users: [{ username: "1001", password: "pw-1001-secret" }, { username: "1002", password: "pw-1002-secret" }],
      },
    },
  });
  const work = mkdtempSync(join(tmpdir(), "webrtc-call-"));
  const tone = join(work, "tone-440.wav");
  toneWav(tone, 440);
  const bundle = await jssipBundle();
  const server = http.createServer((req, res) => {
    if (req.url === "/jssip.js") { res.writeHead(200, { "content-type": "text/javascript" }); return res.end(bundle); }
    res.writeHead(200, { "content-type": "text/html" });
    res.end(`<!doctype html><title>softphone</title><script src="/jssip.js"></script><script>${SOFTPHONE}</script><audio id=remote autoplay></audio>`);
  });
  await new Promise((r) => server.listen(pagePort, "127.0.0.1", r));
  const phone = await startBaresip({ box, user: "1002", password: "pw-1002-secret", domain: DOMAIN, codecs: "PCMU" });
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [...CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
      `--use-file-for-fake-audio-capture=${tone}`, "--allow-loopback-in-peer-connection",
      "--disable-features=WebRtcHideLocalIpsWithMdns", "--autoplay-policy=no-user-gesture-required"],
  });
  const name = t.name.replace(/[^a-z0-9]+/gi, "-").slice(0, 40);
  const cleanup = async () => {
    await browser.close();
    await phone.stop();
    server.close();
    await box.stop();
    writeFileSync(join(ARTIFACTS, `${name}-box.log`), box.stderr ?? "");
    writeFileSync(join(ARTIFACTS, `${name}-baresip.log`), phone.output);
  };
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    await waitForRegistration(api, "1002");
    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const page = await context.newPage();
    page.on("console", (m) => { if (process.env.PAGE_LOG || m.type() === "error") console.log("page:", m.text()); });
    await page.goto(`${origin}/`);
    await page.evaluate(({ wss, domain }) => softphone.register(wss, "1001", "pw-1001-secret", domain),
      { wss: `wss://127.0.0.1:${box.httpsPort}/sip`, domain: DOMAIN });
    return { box, api, page, phone, cleanup };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

async function waitForRegistration(api, user) {
  for (let i = 0; i < 50; i++) {
    const list = (await api.get("/api/v1/sip/registrations")).json.registrations;
    if (list.some((r) => r.user === user)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${user} did not register`);
}

/** What both ends heard: the browser's RTP statistics and spectrum, and baresip's recording. */
async function checkAudioBothWays(result, phone, codec) {
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

test("a browser (JsSIP over WSS) calls a SIP phone (baresip over UDP): G.711 passes through, audio both ways", async (t) => {
  const { api, page, phone, cleanup } = await lab(t);
  try {
    const result = await page.evaluate(async (domain) => {
      await softphone.call(`sip:1002@${domain}`);
      const measured = await softphone.measure();
      await softphone.hangUp();
      return measured;
    }, DOMAIN);
    await checkAudioBothWays(result, phone, "audio/PCMU");
    // The call's record: answered, ended by the caller (the browser).
    const csv = new TextDecoder().decode((await api.get("/api/v1/sip/cdr.csv")).bytes);
    assert.match(csv, /"1001","1002","1002","200","caller-bye"/);
  } finally {
    await cleanup();
  }
});

test("a SIP phone (baresip over UDP) calls a browser registered over WSS: the box offers WebRTC, audio both ways", async (t) => {
  const { api, page, phone, cleanup } = await lab(t);
  try {
    const answered = page.evaluate(async () => {
      await softphone.answer();
      return softphone.measure();
    });
    phone.dial(`sip:1001@${DOMAIN}`);
    const result = await answered;
    // Stopping baresip after the measurement hangs the call up from its side (the caller).
    await checkAudioBothWays(result, phone, "audio/PCMU");
    const csv = new TextDecoder().decode((await api.get("/api/v1/sip/cdr.csv")).bytes);
    assert.match(csv, /"1002","1001","1001","200","caller-bye"/);
  } finally {
    await cleanup();
  }
});

test("a browser that speaks only Opus calls a SIP phone: the box transcodes Opus <-> PCMU, audio both ways", async (t) => {
  const { page, phone, cleanup } = await lab(t);
  try {
    const result = await page.evaluate(async (domain) => {
      softphone.opusOnly = true;
      await softphone.call(`sip:1002@${domain}`);
      const measured = await softphone.measure();
      await softphone.hangUp();
      return measured;
    }, DOMAIN);
    await checkAudioBothWays(result, phone, "audio/opus");
  } finally {
    await cleanup();
  }
});

test("a SIP phone calls a browser that answers with Opus only: the box transcodes, audio both ways", async (t) => {
  const { page, phone, cleanup } = await lab(t);
  try {
    const answered = page.evaluate(async () => {
      softphone.opusOnly = true;
      await softphone.answer();
      return softphone.measure();
    });
    phone.dial(`sip:1001@${DOMAIN}`);
    await checkAudioBothWays(await answered, phone, "audio/opus");
  } finally {
    await cleanup();
  }
});

for (const opusOnly of [false, true]) {
  const how = opusOnly ? "an Opus-only browser (events moved from the 48 kHz clock to 8 kHz)" : "the browser";
  test(`DTMF from ${how} reaches the SIP phone as RFC 4733 telephone events`, async (t) => {
    const { page, phone, cleanup } = await lab(t);
    try {
      await page.evaluate(async ({ domain, opusOnly }) => {
        softphone.opusOnly = opusOnly;
        await softphone.call(`sip:1002@${domain}`);
        await new Promise((r) => setTimeout(r, 1000));
        await softphone.sendDtmf("159#");
        await softphone.hangUp();
      }, { domain: DOMAIN, opusOnly });
      // baresip prints each RFC 4733 event it receives, start and end.
      const received = [...phone.output.matchAll(/received event: '(.)' \(end=1\)/g)].map((m) => m[1]).join("");
      console.log(`baresip received DTMF: ${received}`);
      assert.equal(received, "159#", `baresip's output:\n${phone.output.slice(-2000)}`);
    } finally {
      await cleanup();
    }
  });
}
