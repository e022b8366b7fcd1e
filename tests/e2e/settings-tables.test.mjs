// The installer edits lists (SIP extensions, trunks, routes) as tables in headless
// Chromium: a row added, a bad value refused with the input kept, a row removed,
// stored passwords kept when left empty. Screenshot in tests/artifacts/.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import AxeBuilder from "@axe-core/playwright";
import { startBox, Api, ARTIFACTS, CHROMIUM_ARGS, adminPage } from "./lib/box.mjs";

test("SIP extensions, trunks and routes are edited as tables", async () => {
  const box = await startBox({ provision: {
    admin: { password: "installer-secret-1" },
    sip: { domain: "branch.example", users: [{ username: "1001", password: "pw-1001-secret" }] },
  } });
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS });
  try {
    const page = await adminPage(browser, box, "installer-secret-1");
    await page.goto(box.url + "/settings/sip");
    const bad = (await new AxeBuilder({ page }).analyze()).violations.filter((v) => ["serious", "critical"].includes(v.impact));
    assert.deepEqual(bad.map((v) => `${v.id}: ${v.nodes.map((n) => n.target).join(" ")}`), []);
    // The existing extension is row 0; the blank row 1 adds one. A trunk with a bad port first.
    await page.fill("input[name='users.1.username']", "2001");
    await page.fill("input[name='users.1.password']", "pw-2001-secret");
    await page.fill("input[name='trunks.0.name']", "carrier");
    await page.fill("input[name='trunks.0.host']", "192.0.2.50");
    await page.fill("input[name='trunks.0.port']", "99999");
    await page.selectOption("select[name='trunks.0.transport']", "tcp");
    await page.fill("input[name='routes.0.prefix']", "0");
    await page.fill("input[name='routes.0.trunk']", "carrier");
    await page.click("form.settings button[type=submit]");
    await page.waitForSelector("p.error");
    assert.match(await page.textContent("p.error"), /trunks\[0\]\.port/);
    assert.equal(await page.inputValue("input[name='trunks.0.host']"), "192.0.2.50", "what was typed is kept");
    await page.fill("input[name='trunks.0.port']", "5060");
    await page.fill("input[name='users.1.password']", "pw-2001-secret");
    await page.click("form.settings button[type=submit]");
    await page.waitForLoadState();
    await page.screenshot({ path: ARTIFACTS + "10-sip-tables.png", fullPage: true });
    await page.waitForSelector(".flash", { timeout: 5000 });
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    let sip = (await api.get("/api/v1/config/sip")).json;
    assert.deepEqual(sip.users.map((u) => u.username), ["1001", "2001"]);
    assert.equal(sip.trunks[0].transport, "tcp");
    assert.equal(sip.trunks[0].port, 5060);
    assert.deepEqual(sip.routes, [{ prefix: "0", strip: 0, trunk: "carrier" }]);
    // Remove the route and the new extension; the first extension's password stays.
    await page.check("input[name='routes.0.remove']");
    await page.check("input[name='users.1.remove']");
    await page.click("form.settings button[type=submit]");
    await page.waitForSelector(".flash");
    sip = (await api.get("/api/v1/config/sip")).json;
    assert.deepEqual(sip.users.map((u) => u.username), ["1001"]);
    assert.deepEqual(sip.routes, []);
    const exported = (await api.get("/api/v1/config/export")).json;
    assert.match(exported.sip.users[0].password, /^\$digest\$/, "the stored key was kept");
  } finally {
    await browser.close();
    await box.stop();
  }
});

test("nested settings are fields of their own: camera recording on the cameras page", async () => {
  const box = await startBox({ provision: { admin: { password: "installer-secret-1" } } });
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS });
  try {
    const page = await adminPage(browser, box, "installer-secret-1");
    await page.goto(box.url + "/settings/cameras");
    const bad = (await new AxeBuilder({ page }).analyze()).violations.filter((v) => ["serious", "critical"].includes(v.impact));
    assert.deepEqual(bad.map((v) => `${v.id}: ${v.nodes.map((n) => n.target).join(" ")}`), []);
    // A number out of range is shown at its own field; what was typed stays.
    await page.check("input[name='recording.enabled']");
    await page.fill("input[name='recording.segment_seconds']", "5");
    await page.selectOption("select[name='recording.format']", "mkv");
    await page.click("form.settings button[type=submit]");
    await page.waitForSelector("p.error, .field-error");
    assert.match(await page.textContent("main"), /10-3600 seconds/);
    assert.equal(await page.inputValue("input[name='recording.segment_seconds']"), "5", "what was typed is kept");
    await page.fill("input[name='recording.segment_seconds']", "60");
    await page.click("form.settings button[type=submit]");
    await page.waitForSelector(".flash", { timeout: 5000 });
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    const recording = (await api.get("/api/v1/config/cameras")).json.recording;
    assert.equal(recording.enabled, true);
    assert.equal(recording.segment_seconds, 60);
    assert.equal(recording.format, "mkv");
    assert.equal(recording.max_total_mb, 2048, "the fields not touched keep their values");
  } finally {
    await browser.close();
    await box.stop();
  }
});
