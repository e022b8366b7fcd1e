// WebRTC <-> SIP through the box: JsSIP (npm) in headless Chromium registers
// over WSS and calls baresip (Debian), a plain SIP phone registered over UDP.
// The box terminates ICE/DTLS-SRTP on the browser side and speaks plain RTP
// to baresip. Chromium sends a 440 Hz tone, baresip a 1 kHz one: each side
// must hear the other's.
import { test } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { chromium } from "playwright-core";
import { startBox, freePort, Api, CHROMIUM_ARGS, ARTIFACTS } from "./lib/box.mjs";
import { startBaresip, receivedDtmf } from "./lib/baresip.mjs";
import { sipp, SCENARIOS } from "./lib/sipp.mjs";
import { serveSoftphone, checkAudioBothWays, toneWav } from "./lib/softphone.mjs";

const DOMAIN = "branch.example";

/** A box with users 1001 and 1002 whose `/sip` accepts the softphone page's `origin`. */
function startCallBox(origin, sip = {}) {
  return startBox({
    provision: {
      admin: { password: "installer-secret-1" },
      sip: {
        domain: DOMAIN, ws_allowed_origins: [origin],
        users: [{ username: "1001", password: "pw-1001-secret" }, { username: "1002", password: "pw-1002-secret" }],
        ...sip,
      },
    },
  });
}

/** Headless Chromium whose fake microphone plays the WAV file `tone`. */
function launchChromium(tone) {
  return chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [...CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
      `--use-file-for-fake-audio-capture=${tone}`, "--allow-loopback-in-peer-connection",
      "--disable-features=WebRtcHideLocalIpsWithMdns", "--autoplay-policy=no-user-gesture-required"],
  });
}

/**
 * A box with users 1001 (the browser) and 1002 (baresip), a page with JsSIP
 * in headless Chromium sending a 440 Hz tone, and baresip sending 1 kHz.
 */
async function lab(t, sip = {}, phoneCodecs = "PCMU") {
  const pagePort = await freePort();
  const origin = `http://127.0.0.1:${pagePort}`;
  const box = await startCallBox(origin, sip);
  const { server, tone } = await serveSoftphone("127.0.0.1", pagePort);
  const phone = await startBaresip({ box, user: "1002", password: "pw-1002-secret", domain: DOMAIN, codecs: phoneCodecs });
  const browser = await launchChromium(tone);
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

/**
 * The call's details while it is up: what the box receives from each side, once both
 * sides have sent a second of media.
 */
async function callDetails(api) {
  for (let i = 0; i < 100; i++) {
    const [call] = (await api.get("/api/v1/sip/calls")).json.calls;
    if (call?.caller_media?.packets > 50 && call?.callee_media?.packets > 50) return call;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error("no call with media both ways in the call list");
}

/** The call details an installer reads: each side's codec, WebRTC or not, transcoding, quality. */
function checkDetails(call, { browser, phone, transcoded }) {
  const [fromBrowser, fromPhone] = browser === "caller" ? [call.caller_media, call.callee_media] : [call.callee_media, call.caller_media];
  assert.equal(fromBrowser.webrtc, true, JSON.stringify(call));
  assert.equal(fromPhone.webrtc, false, JSON.stringify(call));
  assert.equal(fromBrowser.codec.toLowerCase(), transcoded ? "opus" : phone.toLowerCase(), JSON.stringify(call));
  assert.equal(fromPhone.codec, phone, JSON.stringify(call));
  for (const leg of [fromBrowser, fromPhone]) {
    assert.equal(leg.transcoded, transcoded, JSON.stringify(call));
    assert.ok(leg.loss_percent < 5 && leg.jitter_ms < 40 && leg.mos > 3.5, `quality on loopback: ${JSON.stringify(leg)}`);
  }
}

test("a browser (JsSIP over WSS) calls a SIP phone (baresip over UDP): G.711 passes through, audio both ways, ICE restart", async (t) => {
  const { api, page, phone, cleanup } = await lab(t);
  try {
    const call = page.evaluate(async (domain) => {
      await softphone.call(`sip:1002@${domain}`);
      const measured = await softphone.measure();
      // An ICE restart mid-call (what a browser does when its network changes): new
      // credentials on both ends, the same DTLS-SRTP session, the audio goes on.
      measured.restart = await softphone.restartIce();
      measured.afterRestart = await softphone.measure();
      await softphone.hangUp();
      return measured;
    }, DOMAIN);
    checkDetails(await callDetails(api), { browser: "caller", phone: "PCMU", transcoded: false });
    const result = await call;
    const { restart, afterRestart } = result;
    assert.ok(restart.before.local && restart.after.local !== restart.before.local, `the browser restarted ICE: ${JSON.stringify(restart)}`);
    assert.ok(restart.before.remote && restart.after.remote !== restart.before.remote, `the box answered with new credentials: ${JSON.stringify(restart)}`);
    assert.ok(afterRestart.second.pair, "ICE selected a pair again");
    assert.ok(afterRestart.second.packetsReceived > afterRestart.first.packetsReceived + 50, "audio from the phone goes on after the restart");
    assert.ok(afterRestart.second.packetsSent > afterRestart.first.packetsSent + 50, "audio to the phone goes on after the restart");
    assert.ok(Math.abs(afterRestart.second.dominantHz - 1000) < 30, `still baresip's tone (${afterRestart.second.dominantHz} Hz)`);
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

for (const [phoneCodec, title] of [
  ["PCMU", "a browser that speaks only Opus calls a SIP phone: the box transcodes Opus <-> PCMU, audio both ways"],
  ["G722", "a browser that speaks only Opus calls a wideband SIP phone: the box transcodes Opus <-> G.722 at 16 kHz, audio both ways"],
]) {
  test(title, async (t) => {
    const { api, page, phone, cleanup } = await lab(t, {}, phoneCodec);
    try {
      const call = page.evaluate(async (domain) => {
        softphone.opusOnly = true;
        await softphone.call(`sip:1002@${domain}`);
        const measured = await softphone.measure();
        await softphone.hangUp();
        return measured;
      }, DOMAIN);
      checkDetails(await callDetails(api), { browser: "caller", phone: phoneCodec, transcoded: true });
      const result = await call;
      await checkAudioBothWays(result, phone, "audio/opus");
    } finally {
      await cleanup();
    }
  });
}

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

// Keys from the browser reach baresip as RFC 4733 events: sent as events (also from an
// Opus-only browser, whose events the box moves to the 8 kHz clock) or as SIP INFO.
const DTMF_CASES = [
  { name: "DTMF from the browser reaches the SIP phone as RFC 4733 telephone events", opusOnly: false, transport: "RFC2833" },
  {
    name: "DTMF from an Opus-only browser (events moved from the 48 kHz clock to 8 kHz) reaches the SIP phone as RFC 4733 telephone events",
    opusOnly: true, transport: "RFC2833",
  },
  {
    name: "DTMF the browser sends as SIP INFO (JsSIP's default) reaches the SIP phone as RFC 4733 telephone events",
    opusOnly: false, transport: "INFO",
  },
];
for (const { name, opusOnly, transport } of DTMF_CASES) {
  test(name, async (t) => {
    const { page, phone, cleanup } = await lab(t);
    try {
      await page.evaluate(async ({ domain, opusOnly, transport }) => {
        softphone.opusOnly = opusOnly;
        await softphone.call(`sip:1002@${domain}`);
        await new Promise((r) => setTimeout(r, 1000));
        await softphone.sendDtmf("159#", transport);
        await softphone.hangUp();
      }, { domain: DOMAIN, opusOnly, transport });
      const received = receivedDtmf(phone.output);
      console.log(`baresip received DTMF: ${received}`);
      assert.equal(received, "159#", `baresip's output:\n${phone.output.slice(-2000)}`);
    } finally {
      await cleanup();
    }
  });
}

test("a trunk configured for SIP INFO DTMF gets the browser's RFC 4733 keys as INFO application/dtmf-relay", async (t) => {
  const trunkPort = await freePort();
  const trunks = [{ name: "ivr", host: "127.0.0.1", port: trunkPort, transport: "udp", dtmf: "info", keepalive_seconds: 0 }];
  const { page, box, cleanup } = await lab(t, { trunks, routes: [{ prefix: "8", strip: 1, trunk: "ivr" }] });
  try {
    const ivr = sipp(box, "ivr", ["-sf", SCENARIOS + "uas_info_dtmf.xml", "-p", String(trunkPort), "-mp", String(await freePort()), "-rtp_echo"]);
    await page.evaluate(async (domain) => {
      await softphone.call(`sip:8123@${domain}`);
      await new Promise((r) => setTimeout(r, 1000));
      await softphone.sendDtmf("159#", "RFC2833");
      await softphone.hangUp();
    }, DOMAIN);
    assert.equal(await ivr, 0, "the trunk got 1, 5, 9, # as SIP INFO, then the BYE");
  } finally {
    await cleanup();
  }
});

test("a SIP phone's RFC 4733 keys reach a trunk configured for SIP INFO as INFO application/dtmf-relay", async (t) => {
  const trunkPort = await freePort();
  const trunks = [{ name: "ivr", host: "127.0.0.1", port: trunkPort, transport: "udp", dtmf: "info", keepalive_seconds: 0 }];
  // The trunk answers PCMA (with telephone events).
  const { box, phone, cleanup } = await lab(t, { trunks, routes: [{ prefix: "8", strip: 1, trunk: "ivr" }] }, "PCMA");
  try {
    const ivr = sipp(box, "ivr", ["-sf", SCENARIOS + "uas_info_dtmf.xml", "-p", String(trunkPort), "-mp", String(await freePort()), "-rtp_echo"]);
    phone.dial(`sip:8123@${DOMAIN}`);
    await new Promise((r) => setTimeout(r, 1500));
    await phone.press("159#");
    await new Promise((r) => setTimeout(r, 500));
    phone.hangUp();
    assert.equal(await ivr, 0, "the trunk got 1, 5, 9, # as SIP INFO (not as RTP events), then the BYE");
  } finally {
    await cleanup();
  }
});

test("a browser calls a browser (both JsSIP over WSS): the box terminates both WebRTC sessions, audio both ways", async (t) => {
  const pagePort = await freePort();
  const origin = `http://127.0.0.1:${pagePort}`;
  const box = await startCallBox(origin);
  // Each browser its own Chromium: the fake microphone is per process (440 Hz and 1 kHz).
  const { server, tone } = await serveSoftphone("127.0.0.1", pagePort);
  const tone1k = join(dirname(tone), "tone-1000.wav");
  toneWav(tone1k, 1000);
  const browsers = [await launchChromium(tone), await launchChromium(tone1k)];
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    const [caller, callee] = await Promise.all(browsers.map(async (browser, i) => {
      const page = await (await browser.newContext({ ignoreHTTPSErrors: true })).newPage();
      page.on("console", (m) => { if (process.env.PAGE_LOG || m.type() === "error") console.log(`page ${i}:`, m.text()); });
      await page.goto(`${origin}/`);
      const user = i === 0 ? "1001" : "1002";
      await page.evaluate(({ wss, domain, user }) => softphone.register(wss, user, `pw-${user}-secret`, domain),
        { wss: `wss://127.0.0.1:${box.httpsPort}/sip`, domain: DOMAIN, user });
      return page;
    }));
    await waitForRegistration(api, "1002");
    const answered = callee.evaluate(async () => {
      await softphone.answer();
      return softphone.measure();
    });
    const called = caller.evaluate(async (domain) => {
      await softphone.call(`sip:1002@${domain}`);
      const measured = await softphone.measure();
      return measured;
    }, DOMAIN);
    const [heardByCaller, heardByCallee] = await Promise.all([called, answered]);
    console.log(JSON.stringify({ heardByCaller, heardByCallee }));
    for (const [result, hz] of [[heardByCaller, 1000], [heardByCallee, 440]]) {
      assert.ok(result.second.pair, "ICE selected a pair with the box");
      assert.equal(result.second.codec, "audio/G722", "G.722, which both browsers speak, passes through untranscoded");
      assert.ok(result.second.packetsReceived > result.first.packetsReceived + 50, "RTP keeps arriving");
      assert.ok(result.second.energy > result.first.energy, "what arrives is not silence");
      assert.ok(Math.abs(result.second.dominantHz - hz) < 30, `the other browser's ${hz} Hz tone is heard (loudest: ${result.second.dominantHz} Hz)`);
    }
    // The caller hangs up; the callee's browser gets the BYE and both halves end.
    await caller.evaluate(() => softphone.hangUp());
    for (let i = 0; i < 50 && (await api.get("/api/v1/sip/calls")).json.calls.length; i++) await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual((await api.get("/api/v1/sip/calls")).json.calls, [], "no call left");
    const ended = await callee.evaluate(() => softphone.session.isEnded());
    assert.ok(ended, "the callee's session ended with the caller's hang-up");
  } finally {
    await Promise.all(browsers.map((b) => b.close()));
    server.close();
    await box.stop();
    writeFileSync(join(ARTIFACTS, "browser-to-browser-box.log"), box.stderr ?? "");
  }
});
