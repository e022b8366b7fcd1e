// WHEP camera viewing: headless Chromium on a page of another origin
// (http://127.0.0.1:<port>) POSTs a recvonly video offer to the box with a
// viewer token, sets the answer and must decode a moving picture. Two viewers
// share one encoder; DELETE ends a session; the error answers of the contract.
import { test } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { startBox, freePort, Api, CHROMIUM_ARGS, ARTIFACTS } from "./lib/box.mjs";

/** Runs in the page: a minimal WHEP player and probes the test reads. */
const PLAYER = `
window.player = {
  async start(url, token, withAudio) {
    const pc = new RTCPeerConnection();
    this.pc = pc;
    // Many players offer audio too; the box declines it (no microphone yet) and still answers video.
    if (withAudio) pc.addTransceiver("audio", { direction: "recvonly" });
    pc.addTransceiver("video", { direction: "recvonly" });
    const video = document.getElementById("v");
    pc.ontrack = (e) => { video.srcObject = new MediaStream([e.track]); };
    await pc.setLocalDescription(await pc.createOffer());
    const headers = { "content-type": "application/sdp" };
    if (token) headers.authorization = "Bearer " + token;
    const res = await fetch(url, { method: "POST", headers, body: pc.localDescription.sdp });
    const answer = await res.text();
    if (res.status !== 201) return { status: res.status, answer };
    this.location = new URL(res.headers.get("location"), url).href;
    this.token = token;
    await pc.setRemoteDescription({ type: "answer", sdp: answer });
    return { status: res.status, location: this.location, answer };
  },
  async stats() {
    const report = await this.pc.getStats();
    let out = { framesDecoded: 0, packetsReceived: 0, state: this.pc.connectionState };
    report.forEach((s) => {
      if (s.type === "inbound-rtp" && s.kind === "video") {
        out = { ...out, framesDecoded: s.framesDecoded ?? 0, packetsReceived: s.packetsReceived ?? 0,
                width: s.frameWidth, height: s.frameHeight, codecId: s.codecId, pliCount: s.pliCount,
                keyFramesDecoded: s.keyFramesDecoded };
      }
      if (s.type === "codec" && /video/.test(s.mimeType)) out.mimeType = s.mimeType;
    });
    return out;
  },
  /** A cheap fingerprint of the picture on screen. */
  picture() {
    const video = document.getElementById("v");
    const canvas = document.createElement("canvas");
    canvas.width = 160; canvas.height = 90;
    const ctx = canvas.getContext("2d");
    ctx.drawImage(video, 0, 0, 160, 90);
    const data = ctx.getImageData(0, 0, 160, 90).data;
    let sum = 0, lit = 0;
    for (let i = 0; i < data.length; i += 4) { sum = (sum * 31 + data[i] + data[i + 1] * 7 + data[i + 2] * 13) >>> 0; if (data[i] > 16) lit++; }
    return { sum, lit };
  },
  async stop() {
    const headers = this.token ? { authorization: "Bearer " + this.token } : {};
    const res = await fetch(this.location, { method: "DELETE", headers });
    this.pc.close();
    return res.status;
  },
};
`;

async function metric(api, name) {
  const text = (await api.get("/metrics")).text;
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line === undefined ? undefined : Number(line.split(" ")[1]);
}

async function until(what, check, ms = 15000) {
  const end = Date.now() + ms;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

/** Waits until the page decodes frames, then proves they keep coming and the picture moves. */
async function assertMovingVideo(page, label) {
  await until(`${label}: first frames`, async () => (await page.evaluate(() => player.stats())).framesDecoded > 5, 20000);
  const first = await page.evaluate(() => player.stats());
  const picture1 = await page.evaluate(() => player.picture());
  await new Promise((r) => setTimeout(r, 1500));
  const second = await page.evaluate(() => player.stats());
  const picture2 = await page.evaluate(() => player.picture());
  assert.ok(second.framesDecoded > first.framesDecoded + 10, `${label}: framesDecoded rising ${JSON.stringify([first, second])}`);
  assert.equal(second.width, 640, `${label}: ${JSON.stringify(second)}`);
  assert.equal(second.height, 360);
  assert.match(second.mimeType ?? "", /H264/i);
  assert.ok(picture1.lit > 1000, `${label}: a picture, not black: ${JSON.stringify(picture1)}`);
  assert.notEqual(picture1.sum, picture2.sum, `${label}: the picture changes`);
  return second;
}

test("WHEP: Chromium views the simulated camera; two viewers share one encoder; DELETE ends it", async (t) => {
  const box = await startBox({ provision: { admin: { password: "installer-secret-1" } } });
  const pagePort = await freePort();
  const origin = `http://127.0.0.1:${pagePort}`;
  const server = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(`<!doctype html><title>player</title><video id=v autoplay muted playsinline></video><script>${PLAYER}</script>`);
  });
  await new Promise((r) => server.listen(pagePort, "127.0.0.1", r));
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [...CHROMIUM_ARGS, "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
      "--autoplay-policy=no-user-gesture-required"],
  });
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    const cameras = (await api.get("/api/v1/cameras")).json;
    const camera = cameras.find((c) => c.simulated);
    assert.ok(camera, "the simulated camera");
    assert.equal(camera.whep, `/whep/${camera.id}`);
    assert.equal(camera.encoder_running, false);
    assert.equal(await metric(api, "branchgate_camera_encoders_running"), 0);
    const minted = await api.post(`/api/v1/cameras/${camera.id}/viewer-token`, { ttl_seconds: 600 });
    assert.equal(minted.status, 200, minted.text);
    const token = minted.json.token;
    const whepUrl = `${box.url}/whep/${camera.id}`;

    const context = await browser.newContext({ ignoreHTTPSErrors: true });
    const pages = [await context.newPage(), await context.newPage()];
    for (const page of pages) {
      page.on("console", (m) => { if (process.env.PAGE_LOG || m.type() === "error") console.log("page:", m.text()); });
      await page.goto(`${origin}/`);
    }

    await t.test("a viewer on another origin with a viewer token gets moving video", async () => {
      const r = await pages[0].evaluate(({ url, token }) => player.start(url, token), { url: whepUrl, token });
      assert.equal(r.status, 201, r.answer);
      assert.match(r.location, new RegExp(`/whep/${camera.id}/[0-9a-f]{32}$`));
      assert.match(r.answer, /a=ice-lite/);
      assert.match(r.answer, /a=candidate:.* 127\.0\.0\.1 \d+ typ host/, "loopback candidate among all of them");
      assert.match(r.answer, /a=sendonly/);
      assert.doesNotMatch(r.answer, /a=end-of-candidates[\s\S]*a=candidate/, "every candidate before the end");
      await assertMovingVideo(pages[0], "viewer 1");
    });

    await t.test("a second viewer (offering audio and video): both decode, one encoder", async () => {
      const r = await pages[1].evaluate(({ url, token }) => player.start(url, token, true), { url: whepUrl, token });
      assert.equal(r.status, 201, r.answer);
      assert.match(r.answer, /m=audio 0 /, "audio declined");
      await assertMovingVideo(pages[1], "viewer 2");
      await assertMovingVideo(pages[0], "viewer 1 still");
      assert.equal(await metric(api, "branchgate_camera_encoders_running"), 1, "one encode for two viewers");
      assert.equal(await metric(api, "branchgate_whep_viewers"), 2);
      const listed = (await api.get("/api/v1/cameras")).json.find((c) => c.id === camera.id);
      assert.equal(listed.viewers, 2);
      assert.equal(listed.encoder_running, true);
    });

    await t.test("DELETE ends a session; the encoder stops after the last viewer", async () => {
      assert.equal(await pages[0].evaluate(() => player.stop()), 204);
      await until("one viewer left", async () => (await metric(api, "branchgate_whep_viewers")) === 1);
      assert.equal(await metric(api, "branchgate_camera_encoders_running"), 1);
      const still = await pages[1].evaluate(() => player.stats());
      await new Promise((r) => setTimeout(r, 1000));
      assert.ok((await pages[1].evaluate(() => player.stats())).framesDecoded > still.framesDecoded, "the other viewer goes on");
      // Without the token the request is a cookie request from a foreign origin: refused (403, no CORS).
      const tokenless = await pages[1].evaluate(async () => {
        try { return (await fetch(player.location, { method: "DELETE" })).status; } catch { return "refused"; }
      });
      assert.equal(tokenless, "refused", "DELETE needs the token or the cookie");
      assert.equal(await pages[1].evaluate(() => player.stop()), 204);
      await until("no viewer", async () => (await metric(api, "branchgate_whep_viewers")) === 0);
      await until("encoder stopped", async () => (await metric(api, "branchgate_camera_encoders_running")) === 0);
    });

    await t.test("a viewer that goes away without DELETE is ended (consent or DTLS close)", async () => {
      const r = await pages[1].evaluate(({ url, token }) => player.start(url, token), { url: whepUrl, token });
      assert.equal(r.status, 201, r.answer);
      await until("frames", async () => (await pages[1].evaluate(() => player.stats())).framesDecoded > 5, 20000);
      await pages[1].close();
      await until("session ended by itself", async () => (await metric(api, "branchgate_whep_viewers")) === 0, 45000);
      assert.equal(await metric(api, "branchgate_camera_encoders_running"), 0);
    });

    await t.test("the admin cookie authorises same-origin requests only; errors of the contract", async () => {
      const offer = await pages[0].evaluate(async () => {
        const pc = new RTCPeerConnection();
        pc.addTransceiver("video", { direction: "recvonly" });
        const o = await pc.createOffer();
        pc.close();
        return o.sdp;
      });
      const sdp = { "content-type": "application/sdp" };
      const anon = new Api(box.url);
      assert.equal((await anon.request("POST", `/whep/${camera.id}`, { raw: offer, headers: sdp })).status, 401);
      assert.equal((await anon.request("POST", `/whep/${camera.id}`, { raw: offer, headers: { ...sdp, authorization: "Bearer sim0.1.00" } })).status, 401);
      const other = (await api.post(`/api/v1/cameras/${camera.id}/viewer-token`, { ttl_seconds: 0 })).status;
      assert.equal(other, 422, "ttl bounds");
      assert.equal((await api.request("POST", "/whep/nope", { raw: offer, headers: sdp })).status, 404);
      assert.equal((await api.request("POST", `/whep/${camera.id}`, { raw: offer, headers: { "content-type": "text/plain" } })).status, 415);
      assert.equal((await api.request("POST", `/whep/${camera.id}`, { raw: "v=0\r\nbogus", headers: sdp })).status < 500, true);
      const audioOnly = offer.replace(/m=video[\s\S]*/, "").replace(/a=group:BUNDLE.*\r\n/, "");
      const noVideo = await api.request("POST", `/whep/${camera.id}`, { raw: audioOnly, headers: sdp });
      assert.equal(noVideo.status, 422, noVideo.text);
      const foreign = await api.request("POST", `/whep/${camera.id}`, { raw: offer, headers: { ...sdp, origin: "https://evil.example" } });
      assert.equal(foreign.status, 403, "the cookie is not enough from a foreign origin");
      const viaCookie = await api.request("POST", `/whep/${camera.id}`, { raw: offer, headers: sdp });
      assert.equal(viaCookie.status, 201, viaCookie.text);
      assert.equal(viaCookie.headers["content-type"], "application/sdp");
      const location = viaCookie.headers.location;
      assert.equal((await anon.request("DELETE", location)).status, 401);
      assert.equal((await api.request("DELETE", location)).status, 204);
      assert.equal((await api.request("DELETE", location)).status, 404);
      const preflight = await anon.request("OPTIONS", `/whep/${camera.id}`, { headers: { origin: "https://player.example", "access-control-request-method": "POST" } });
      assert.equal(preflight.status, 204);
      assert.equal(preflight.headers["access-control-expose-headers"], "location");
    });
  } finally {
    await browser.close();
    server.close();
    await box.stop();
    writeFileSync(join(ARTIFACTS, "whep-box.log"), box.stderr ?? "");
  }
});
