// The box's own browser phone, /phone, in headless Chromium: a SIP user logs in with
// extension and SIP password (JsSIP, vendored and served by the box, over wss://<box>/sip),
// calls baresip (a SIP phone over UDP) with the dial pad, sees the call connected with its
// statistics rising, sends a DTMF key baresip hears as RFC 4733, holds, mutes and hangs up;
// a wrong password says so; baresip calls the page, which rings, answers and hangs up.
// `sip.ws_allowed_origins` names only some other web app: the box's own origin still works.
import { createHmac } from "node:crypto";
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { writeFileSync, mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import AxeBuilder from "@axe-core/playwright";
import { startBox, Api, CHROMIUM_ARGS, ARTIFACTS } from "./lib/box.mjs";
import { startBaresip, receivedDtmf } from "./lib/baresip.mjs";
import { toneWav } from "./lib/softphone.mjs";

const DOMAIN = "branch.example";
const USERS = [{ username: "1001", password: "pw-1001-secret" }, { username: "1002", password: "pw-1002-secret" }];
let box, api, phone, browser;
const TURN_SECRET = "phone-turn-secret-1";
/** Console errors of every page (a CSP violation shows up here). */
const pageErrors = [];

before(async () => {
  box = await startBox({
    provision: {
      admin: { password: "installer-secret-1" },
      sip: { domain: DOMAIN, ws_allowed_origins: ["https://softphone.customer.example"], users: USERS },
      turn: { auth_secret: TURN_SECRET },
    },
  });
  api = new Api(box.url);
  await api.login("admin", "installer-secret-1");
  phone = await startBaresip({ box, user: "1002", password: "pw-1002-secret", domain: DOMAIN, codecs: "PCMU" });
  await waitForRegistration("1002");
  const tone = join(mkdtempSync(join(tmpdir(), "phone-page-")), "tone-440.wav");
  toneWav(tone, 440);
  browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [...CHROMIUM_ARGS, "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
      `--use-file-for-fake-audio-capture=${tone}`, "--allow-loopback-in-peer-connection",
      "--disable-features=WebRtcHideLocalIpsWithMdns", "--autoplay-policy=no-user-gesture-required"],
  });
});

after(async () => {
  await browser?.close();
  await phone?.stop();
  await box?.stop();
  writeFileSync(join(ARTIFACTS, "phone-box.log"), box?.stderr ?? "");
  writeFileSync(join(ARTIFACTS, "phone-baresip.log"), phone?.output ?? "");
});

async function waitForRegistration(user) {
  for (let i = 0; i < 50; i++) {
    const list = (await api.get("/api/v1/sip/registrations")).json.registrations;
    if (list.some((r) => r.user === user)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${user} did not register`);
}

async function openPhone() {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 900, height: 1000 } });
  const page = await context.newPage();
  page.on("console", (m) => {
    if (m.type() === "error") pageErrors.push(m.text());
    if (process.env.PAGE_LOG) console.log("page:", m.text());
  });
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  const response = await page.goto(`${box.url}/phone`);
  assert.equal(response.status(), 200);
  assert.match(response.headers()["permissions-policy"], /microphone=\(self\)/);
  return page;
}

async function logIn(page, extension, password) {
  await page.fill("#extension", extension);
  await page.fill("#sip-password", password);
  await page.click("#login-button");
}

async function checkAccessibility(page, name) {
  const result = await new AxeBuilder({ page }).analyze();
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(bad.map((v) => `${name}: ${v.id} ${v.help} (${v.nodes.map((n) => n.target).join(" ")})`), []);
}

const stat = (page, name) => page.$eval(`[data-stat=${name}]`, (e) => Number(e.dataset.value ?? NaN));
const receivedEvents = () => receivedDtmf(phone.output);

test("a wrong SIP password is refused with a clear message", async () => {
  const page = await openPhone();
  try {
    await checkAccessibility(page, "/phone login");
    await logIn(page, "1001", "not-the-password");
    await page.waitForSelector("#phone-error:not([hidden])", { timeout: 10000 });
    assert.equal(await page.textContent("#phone-error"), "Wrong extension or SIP password.");
    assert.equal(await page.getAttribute("#reg-state", "data-state"), "offline");
    assert.ok(await page.isVisible("#login-form"), "the login form is back");
    assert.equal(await page.inputValue("#sip-password"), "", "the password is not kept in the form");
  } finally {
    await page.context().close();
  }
});

test("register, dial with the pad, call baresip, stats rise, DTMF, mute, hold, hang up", async () => {
  const page = await openPhone();
  try {
    const ice = page.waitForResponse((r) => r.url().endsWith("/phone/ice-servers"));
    await logIn(page, "1001", "pw-1001-secret");
    await page.waitForSelector("#reg-state[data-state=registered]", { timeout: 10000 });
    assert.equal(await page.textContent("#reg-state"), "Registered as 1001");
    // Once registered, the page gets the box's TURN with REST credentials minted for 1001.
    const offered = await (await ice).json();
    const [server] = offered.iceServers ?? [];
    assert.ok(server, `TURN offered: ${JSON.stringify(offered)}`);
    assert.ok(server.urls.some((u) => /^turn:127\.0\.0\.1:\d+\?transport=udp$/.test(u)), JSON.stringify(server));
    assert.ok(server.urls.some((u) => /^turns:127\.0\.0\.1:\d+\?transport=tcp$/.test(u)), JSON.stringify(server));
    const [expiry, user] = server.username.split(":");
    assert.equal(user, "1001");
    assert.ok(Number(expiry) > Date.now() / 1000 + 3600, "valid for hours");
    assert.equal(server.credential, createHmac("sha1", TURN_SECRET).update(server.username).digest("base64"));
    const refused = await api.post("/phone/ice-servers", { username: "1001", password: "wrong-password" });
    assert.equal(refused.status, 401, "wrong SIP credentials get no TURN");
    await waitForRegistration("1001");
    await checkAccessibility(page, "/phone registered");
    for (const key of "1002") await page.click(`.keypad button[data-key="${key}"]`);
    assert.equal(await page.inputValue("#number"), "1002");
    await page.screenshot({ path: join(ARTIFACTS, "phone-registered.png") });

    await page.click("#call-button");
    await page.waitForSelector("#call-state[data-state=in-call]", { timeout: 15000 });
    assert.equal(await page.textContent("#call-state"), "In call with 1002");
    await page.waitForTimeout(2500);
    const first = { received: await stat(page, "received"), sent: await stat(page, "sent") };
    await page.waitForTimeout(2000);
    const second = { received: await stat(page, "received"), sent: await stat(page, "sent") };
    console.log("stats", JSON.stringify({ first, second }));
    assert.ok(second.received > first.received + 50, "packets received keep rising");
    assert.ok(second.sent > first.sent + 50, "packets sent keep rising");
    assert.match(await page.textContent("[data-stat=codec]"), /^PCMU 8 kHz$/);
    assert.match(await page.textContent("[data-stat=loss]"), /%/);
    assert.match(await page.textContent("[data-stat=jitter]"), /ms$/);
    assert.match(await page.textContent("[data-stat=rtt]"), /ms$/);
    await checkAccessibility(page, "/phone in call");
    await page.screenshot({ path: join(ARTIFACTS, "phone-in-call.png") });

    // During a call the pad sends RFC 4733 DTMF, which baresip reports.
    await page.click('.keypad button[data-key="5"]');
    assert.equal(await page.textContent("#dtmf-sent"), "Sent: 5");
    assert.equal(await page.inputValue("#number"), "1002", "a key in a call is not typed into the number");
    for (let i = 0; i < 30 && !receivedEvents().includes("5"); i++) await page.waitForTimeout(100);
    assert.equal(receivedEvents(), "5", `baresip's output:\n${phone.output.slice(-1500)}`);

    await page.click("#mute-button");
    assert.equal(await page.getAttribute("#mute-button", "aria-pressed"), "true");
    assert.equal(await page.evaluate(() => document.getElementById("remote-audio").muted), false);
    // A SIP hold: the page shows it once the re-INVITE went through the box to baresip.
    await page.click("#hold-button");
    await page.waitForFunction(() => document.getElementById("call-state").textContent === "On hold: 1002", null, { timeout: 5000 });
    assert.equal(await page.evaluate(() => document.getElementById("remote-audio").muted), true);
    await page.click("#hold-button");
    await page.waitForFunction(() => document.getElementById("call-state").textContent === "In call with 1002", null, { timeout: 5000 });
    await page.click("#mute-button");

    await page.click("#hangup-button");
    await page.waitForSelector("#call-state[data-state=ended]", { timeout: 5000 });
    assert.equal(await page.textContent("#call-state"), "Call ended");
    assert.ok(await page.isHidden("#stats") === false, "the last call's figures stay readable");
    const csv = new TextDecoder().decode((await api.get("/api/v1/sip/cdr.csv")).bytes);
    assert.match(csv, /"1001","1002","1002","200","caller-bye"/);

    // The extension is remembered, the password is not.
    await page.reload();
    assert.equal(await page.inputValue("#extension"), "1001");
    assert.equal(await page.inputValue("#sip-password"), "");
    assert.equal(await page.evaluate(() => JSON.stringify(localStorage).includes("pw-1001")), false);
  } finally {
    await page.context().close();
  }
});

test("baresip calls the page: it rings, is answered, media flows, and is hung up", async () => {
  const page = await openPhone();
  try {
    await logIn(page, "1001", "pw-1001-secret");
    await page.waitForSelector("#reg-state[data-state=registered]", { timeout: 10000 });
    // The page's new registration is the newest contact for 1001.
    await page.waitForTimeout(500);
    phone.dial(`sip:1001@${DOMAIN}`);
    await page.waitForSelector("#incoming:not([hidden])", { timeout: 15000 });
    assert.equal(await page.textContent("#incoming-from"), "1002");
    assert.equal(await page.getAttribute("#call-state", "data-state"), "incoming");
    await checkAccessibility(page, "/phone ringing");
    await page.screenshot({ path: join(ARTIFACTS, "phone-ringing.png") });
    await page.click("#answer-button");
    await page.waitForSelector("#call-state[data-state=in-call]", { timeout: 15000 });
    await page.waitForTimeout(2500);
    const first = await stat(page, "received");
    await page.waitForTimeout(1500);
    assert.ok(await stat(page, "received") > first + 30, "packets received keep rising");
    await page.click("#hangup-button");
    await page.waitForSelector("#call-state[data-state=ended]", { timeout: 5000 });
    const csv = new TextDecoder().decode((await api.get("/api/v1/sip/cdr.csv")).bytes);
    assert.match(csv, /"1002","1001","1001","200","callee-bye"/);
  } finally {
    await page.context().close();
  }
});

test("no page errors (a CSP violation would be one)", () => {
  assert.deepEqual(pageErrors, []);
});
