// GET /api/v1/devices: every device of the box and whether it is simulated. On a machine
// without /dev/snd, GPIO lines or a watchdog device (CI, a developer's machine) everything
// is the simulated backend; /api/v1/cameras keeps its own shape. The same HAL meets real
// kernel drivers in tests/vm (hal-vm.test.mjs).
import { test } from "node:test";
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { chromium } from "playwright-core";
import AxeBuilder from "@axe-core/playwright";
import { startBox, Api, CHROMIUM_ARGS, ARTIFACTS, adminPage } from "./lib/box.mjs";

test("the devices API lists cameras, audio, GPIO and the watchdog with `simulated`", async () => {
  const box = await startBox({ provision: { admin: { password: "installer-secret-1" } } });
  try {
    const api = new Api(box.url);
    assert.equal((await api.get("/api/v1/devices")).status, 401, "login first");
    await api.login("admin", "installer-secret-1");
    const res = await api.get("/api/v1/devices");
    assert.equal(res.status, 200);
    const d = res.json;

    // Cameras: the same list as /api/v1/cameras (the contract's path and fields stay).
    const cameras = (await api.get("/api/v1/cameras")).json;
    assert.deepEqual(d.cameras.map((c) => c.id), cameras.map((c) => c.id));
    for (const c of d.cameras) for (const key of ["id", "name", "simulated"]) assert.ok(key in c, key);

    // Audio: ALSA where the machine has sound cards, else the simulated card.
    assert.equal(typeof d.audio.simulated, "boolean");
    assert.ok(Array.isArray(d.audio.devices) && d.audio.devices.length >= 1, JSON.stringify(d.audio));
    if (!existsSync("/dev/snd")) {
      assert.equal(d.audio.backend, "simulated");
      const pcm = d.audio.devices[0];
      assert.ok(pcm.simulated && pcm.capture && pcm.playback);
      assert.equal(d.audio.mixers[0].control, "Master");
    }
    for (const pcm of d.audio.devices) for (const key of ["id", "card", "name", "capture", "playback", "simulated"]) assert.ok(key in pcm, key);

    // GPIO: the LED and the reset button, in memory without GPIO lines; the LED shows the state.
    const roles = d.gpio.pins.map((p) => p.role).sort();
    assert.deepEqual(roles, ["button", "led"]);
    for (const pin of d.gpio.pins) assert.equal(typeof pin.simulated, "boolean");
    assert.ok(["boot", "ok", "error", "updating"].includes(d.gpio.led_pattern), d.gpio.led_pattern);
    assert.equal(d.gpio.reset_armed, false);

    // Watchdog: no --watchdog-device and no systemd here: simulated, and petted while healthy.
    assert.equal(d.watchdog.kind, "simulated");
    assert.equal(d.watchdog.simulated, true);
    assert.ok(d.watchdog.pets >= 1 && d.watchdog.petting, JSON.stringify(d.watchdog));

    // Once ready and healthy the LED is steady on.
    let pattern = d.gpio.led_pattern;
    for (let i = 0; i < 20 && pattern !== "ok"; i++) {
      await new Promise((r) => setTimeout(r, 100));
      pattern = (await api.get("/api/v1/devices")).json.gpio.led_pattern;
    }
    assert.equal(pattern, "ok");
    const led = (await api.get("/api/v1/devices")).json.gpio.pins.find((p) => p.role === "led");
    if (led.simulated) assert.equal(led.level, true, "steady on");

    const openapi = (await api.get("/api/v1/openapi.json")).json;
    assert.ok(openapi.paths["/api/v1/devices"]?.get, "documented");
  } finally { await box.stop(); }
});

test("the devices page: every device with `simulated` shown, and a live camera preview that starts and stops", async () => {
  const box = await startBox({ provision: { admin: { password: "installer-secret-1" } } });
  const browser = await chromium.launch({
    executablePath: "/usr/bin/chromium",
    args: [...CHROMIUM_ARGS, "--allow-loopback-in-peer-connection", "--disable-features=WebRtcHideLocalIpsWithMdns",
      "--autoplay-policy=no-user-gesture-required"],
  });
  try {
    const page = await adminPage(browser, box, "installer-secret-1", { width: 1280, height: 1200 });
    await page.goto(box.url + "/devices");
    const bad = (await new AxeBuilder({ page }).analyze()).violations.filter((v) => ["serious", "critical"].includes(v.impact));
    assert.deepEqual(bad.map((v) => `${v.id}: ${v.nodes.map((n) => n.target).join(" ")}`), []);
    const text = await page.textContent("main");
    for (const expected of ["sim0", "simulated", "rtsp://", "Master", "led", "button"]) {
      assert.ok(text.includes(expected), `the page shows ${expected}`);
    }
    assert.match(await page.textContent("#led-pattern"), /\w+/);
    assert.match(await page.textContent("#watchdogs"), /simulated/);

    // The live preview: a WHEP viewer with the admin session; the picture moves.
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    await page.click(".preview-button[data-whep='/whep/sim0']");
    await page.waitForFunction(() => {
      const video = document.getElementById("preview-sim0");
      return !video.hidden && video.getVideoPlaybackQuality().totalVideoFrames > 10;
    }, null, { timeout: 20000 });
    assert.equal(await page.getAttribute(".preview-button[data-whep='/whep/sim0']", "aria-pressed"), "true");
    assert.match(await page.textContent(".camera .preview-state"), /Live/);
    assert.equal((await api.get("/api/v1/cameras")).json.find((c) => c.id === "sim0").viewers, 1);
    await page.screenshot({ path: ARTIFACTS + "devices-page.png", fullPage: true });
    // Stopping ends the viewer on the box, and the encoder with it.
    await page.click(".preview-button[data-whep='/whep/sim0']");
    let viewers = 1;
    for (let i = 0; i < 50 && viewers !== 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      viewers = (await api.get("/api/v1/cameras")).json.find((c) => c.id === "sim0").viewers;
    }
    assert.equal(viewers, 0, "the preview's viewer is gone");
  } finally {
    await browser.close();
    await box.stop();
  }
});
