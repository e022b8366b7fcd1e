// Runs inside a network namespace that has only loopback (see turn.test.mjs):
// two RTCPeerConnections in headless Chromium, restricted to relay
// candidates, call each other through the box's TURN server. Prints one JSON
// line with what the receiving side saw; exits non-zero when media did not flow.
import http from "node:http";
import { chromium } from "playwright-core";
import { startBox, freePort, CHROMIUM_ARGS, LAB_TURN } from "./box.mjs";

const transport = process.argv[2] || "udp";
const box = await startBox({ provision: { admin: { password: "installer-secret-1" }, turn: LAB_TURN } });
const turnPort = box.turnPort;
// getUserMedia needs a secure context: a page from http://127.0.0.1, not about:blank.
const pagePort = await freePort();
const server = http.createServer((_, res) => { res.writeHead(200, { "content-type": "text/html" }); res.end("<!doctype html><title>relay call</title>"); });
await new Promise((r) => server.listen(pagePort, "127.0.0.1", r));
const browser = await chromium.launch({
  executablePath: "/usr/bin/chromium",
  args: [...CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns", "--autoplay-policy=no-user-gesture-required"],
});
let result;
try {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${pagePort}/`);
  result = await page.evaluate(async ({ turnPort, transport }) => {
    const config = {
      iceServers: [{ urls: `turn:127.0.0.1:${turnPort}?transport=${transport}`, username: "test", credential: "secret" }],
      iceTransportPolicy: "relay",
    };
    const caller = new RTCPeerConnection(config);
    const callee = new RTCPeerConnection(config);
    caller.onicecandidate = (e) => e.candidate && callee.addIceCandidate(e.candidate);
    callee.onicecandidate = (e) => e.candidate && caller.addIceCandidate(e.candidate);
    const stream = await navigator.mediaDevices.getUserMedia({ audio: true });
    stream.getTracks().forEach((t) => caller.addTrack(t, stream));
    const received = new Promise((resolve) => { callee.ontrack = (e) => resolve(e.track); });
    await caller.setLocalDescription();
    await callee.setRemoteDescription(caller.localDescription);
    await callee.setLocalDescription();
    await caller.setRemoteDescription(callee.localDescription);
    await received;
    const connected = await new Promise((resolve) => {
      const check = () => callee.connectionState === "connected" ? resolve(true)
        : ["failed", "closed"].includes(callee.connectionState) ? resolve(false) : setTimeout(check, 100);
      setTimeout(() => resolve(false), 20000);
      check();
    });
    const sample = async () => {
      const stats = await callee.getStats();
      let inbound = null, pair = null;
      stats.forEach((s) => {
        if (s.type === "inbound-rtp" && s.kind === "audio") inbound = s;
        if (s.type === "candidate-pair" && s.nominated && s.state === "succeeded") pair = s;
      });
      const local = pair ? stats.get(pair.localCandidateId) : null;
      const remote = pair ? stats.get(pair.remoteCandidateId) : null;
      return { packets: inbound?.packetsReceived ?? 0, lost: inbound?.packetsLost ?? 0,
        localType: local?.candidateType, remoteType: remote?.candidateType, relayProtocol: local?.relayProtocol };
    };
    const first = await sample();
    await new Promise((r) => setTimeout(r, 2000));
    const second = await sample();
    return { connected, first, second };
  }, { turnPort, transport });
} finally {
  await browser.close();
  server.close();
  await box.stop();
}
console.log(JSON.stringify(result));
const ok = result.connected && result.second.packets > result.first.packets && result.second.packets > 50
  && result.second.localType === "relay";
process.exit(ok ? 0 : 1);
