// Runs inside the "public" network namespace of webrtc-nat.test.mjs: the box
// and baresip live here; headless Chromium is started in the "branch LAN"
// namespace (through a launcher that enters it), behind a NAT router that
// lets UDP through only to the box's TURN port. JsSIP in Chromium calls
// baresip with the box's TURN server configured: media can only flow through
// the relay. Exits non-zero (with the reason) when it did not.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { startBox, freePort, CHROMIUM_ARGS, ARTIFACTS } from "./box.mjs";
import { startBaresip } from "./baresip.mjs";
import { serveSoftphone, checkAudioBothWays } from "./softphone.mjs";

const [boxIp, turnPort, chromiumLauncher] = process.argv.slice(2);
const DOMAIN = "branch.example";
const pagePort = await freePort();
const origin = `http://${boxIp}:${pagePort}`;
const box = await startBox({
  provision: {
    admin: { password: "installer-secret-1" },
    network: { admin_bind: boxIp },
    sip: {
      domain: DOMAIN, ws_allowed_origins: [origin],
      users: [{ username: "1001", password: "pw-1001-secret" }, { username: "1002", password: "pw-1002-secret" }],
    },
    // The default peer policy: nothing opened by the operator.
    turn: { realm: DOMAIN, users: [{ username: "test", password: "secret" }], udp_port: Number(turnPort), tcp_port: Number(turnPort) },
  },
});
const { server, tone } = await serveSoftphone(boxIp, pagePort);
const phone = await startBaresip({ box, user: "1002", password: "pw-1002-secret", domain: DOMAIN, codecs: "PCMU" });
const browser = await chromium.launch({
  executablePath: chromiumLauncher,
  args: [...CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
    `--use-file-for-fake-audio-capture=${tone}`, `--unsafely-treat-insecure-origin-as-secure=${origin}`,
    "--disable-features=WebRtcHideLocalIpsWithMdns", "--autoplay-policy=no-user-gesture-required"],
});
let failed = false;
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  await page.goto(`${origin}/`);
  const result = await page.evaluate(async ({ wss, turn, domain }) => {
    softphone.pcConfig = { iceServers: [{ urls: turn, username: "test", credential: "secret" }] };
    await softphone.register(wss, "1001", "pw-1001-secret", domain);
    await softphone.call(`sip:1002@${domain}`);
    const measured = await softphone.measure();
    await softphone.hangUp();
    return measured;
  }, { wss: `wss://${boxIp}:${box.httpsPort}/sip`, turn: `turn:${boxIp}:${turnPort}?transport=udp`, domain: DOMAIN });
  if (result.second.localType !== "relay") throw new Error(`the browser's media did not go through the relay: ${JSON.stringify(result)}`);
  await checkAudioBothWays(result, phone, "audio/PCMU");
  console.log(`NAT call through the box's TURN: ${JSON.stringify(result.second)}`);
} catch (e) {
  failed = true;
  console.error(e);
} finally {
  await browser.close();
  await phone.stop();
  server.close();
  await box.stop();
  writeFileSync(join(ARTIFACTS, "nat-call-box.log"), box.stderr ?? "");
  writeFileSync(join(ARTIFACTS, "nat-call-baresip.log"), phone.output);
}
process.exit(failed ? 1 : 0);
