// The installer's first hour, in headless Chromium: first login with the
// forced password change, the setup wizard, a SIP setting changed (with a
// validation error first), the change in the history, an older revision
// restored, and the dashboard updating live. Screenshots go to tests/artifacts/;
// axe must find no serious or critical accessibility issue on any page visited.
import { test } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import AxeBuilder from "@axe-core/playwright";
import { startBox, Api, ARTIFACTS, CHROMIUM_ARGS } from "./lib/box.mjs";

const NEW_PASSWORD = "branch-office-2026";

async function checkAccessibility(page, name) {
  const result = await new AxeBuilder({ page }).analyze();
  const bad = result.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  assert.deepEqual(bad.map((v) => `${name}: ${v.id} ${v.help} (${v.nodes.map((n) => n.target).join(" ")})`), []);
}

test("installer: first login, wizard, SIP change, history, restore, live dashboard", async () => {
  const box = await startBox({ provision: { system: { setup_complete: false } } });
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS });
  try {
    const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: { width: 1280, height: 900 } });
    const page = await context.newPage();
    page.on("dialog", (dialog) => dialog.accept());

    // Not logged in: the login page.
    await page.goto(box.url + "/");
    assert.match(page.url(), /\/login$/);
    await checkAccessibility(page, "login");
    await page.screenshot({ path: ARTIFACTS + "01-login.png" });

    // A wrong password says so.
    await page.fill("#username", "admin");
    await page.fill("#password", "not-the-password");
    await page.click("button[type=submit]");
    await page.waitForSelector("#login-error");

    // First login: forced to choose a password.
    await page.fill("#username", "admin");
    await page.fill("#password", box.password);
    await page.click("button[type=submit]");
    await page.waitForURL(/\/password$/);
    await checkAccessibility(page, "password");
    // Other pages stay out of reach until the password is changed.
    await page.goto(box.url + "/settings/sip");
    assert.match(page.url(), /\/password$/);
    await page.fill("#current_password", box.password);
    // Reusing the initial password is refused by the server (the browser checks only the length).
    await page.fill("#new_password", box.password);
    await page.fill("#repeat_password", box.password);
    await page.click("main form button[type=submit]");
    await page.waitForSelector("#new_password-error");
    await page.screenshot({ path: ARTIFACTS + "02-password-error.png" });
    await page.fill("#current_password", box.password);
    await page.fill("#new_password", NEW_PASSWORD);
    await page.fill("#repeat_password", NEW_PASSWORD);
    await page.click("main form button[type=submit]");

    // The wizard.
    await page.waitForURL(/\/setup$/);
    await checkAccessibility(page, "setup");
    await page.screenshot({ path: ARTIFACTS + "03-setup.png" });
    await page.fill("#hostname", "shop-17");
    await page.fill("#sip_domain", "shop17.example");
    await page.click("main form button[type=submit]");
    await page.waitForURL((url) => url.pathname === "/");
    assert.match(await page.textContent(".flash"), /Setup complete/);
    assert.match(await page.textContent(".brand"), /shop-17/);

    // The dashboard updates live (server-sent events).
    await page.waitForFunction(() => document.getElementById("updated").textContent !== "now", null, { timeout: 10000 });
    const first = await page.textContent("#updated");
    await page.waitForFunction((t) => document.getElementById("updated").textContent !== t, first, { timeout: 10000 });
    const revisionShown = Number(await page.textContent("[data-field=revision]"));
    // A change made elsewhere (the API) shows up without a reload.
    const api = new Api(box.url);
    await api.login("admin", NEW_PASSWORD);
    assert.equal((await api.put("/api/v1/config/audio", { playback_volume: 55 })).status, 200);
    await page.waitForFunction((r) => Number(document.querySelector("[data-field=revision]").textContent) > r, revisionShown, { timeout: 10000 });
    await checkAccessibility(page, "dashboard");
    await page.screenshot({ path: ARTIFACTS + "04-dashboard.png" });

    // A SIP setting: first a mistake, shown next to the field, then the fix.
    await page.goto(box.url + "/settings/sip");
    await page.fill("#f-domain", "not a domain");
    await page.fill("#f-udp_port", "5070");
    await page.click("form.settings button[type=submit]");
    await page.waitForSelector("#f-domain-error");
    assert.equal(await page.inputValue("#f-udp_port"), "5070", "what was typed is kept");
    await checkAccessibility(page, "settings with errors");
    await page.screenshot({ path: ARTIFACTS + "05-settings-error.png" });
    await page.fill("#f-domain", "shop17.example");
    await page.fill("#comment", "move SIP to 5070");
    await page.click("form.settings button[type=submit]");
    await page.waitForSelector(".flash");
    assert.match(await page.textContent(".flash"), /Saved \(revision \d+\)/);
    assert.equal((await api.get("/api/v1/config/sip")).json.udp_port, 5070);

    // The history shows it, with its diff.
    await page.goto(box.url + "/history");
    await checkAccessibility(page, "history");
    const row = page.locator("tr", { hasText: "move SIP to 5070" });
    await row.locator("a").first().click();
    await page.waitForSelector("table.diff");
    assert.match(await page.textContent("table.diff"), /sip\.udp_port/);
    await page.screenshot({ path: ARTIFACTS + "06-revision-diff.png" });

    // Restore the revision before the change.
    const changed = Number(new URL(page.url()).pathname.split("/").pop());
    await page.goto(box.url + "/history");
    await page.locator(`form[action="/history/${changed - 1}/restore"] button`).click();
    await page.waitForSelector(".flash");
    assert.match(await page.textContent(".flash"), /Restored/);
    assert.equal((await api.get("/api/v1/config/sip")).json.udp_port, box.sipPort);
    await page.screenshot({ path: ARTIFACTS + "07-history-restored.png" });

    // Backup: a broken file is refused with a message; a real backup restores.
    await page.goto(box.url + "/backup");
    await checkAccessibility(page, "backup");
    const before = (await api.get("/api/v1/config")).json.revision;
    await page.setInputFiles("#backup", { name: "broken.json", mimeType: "application/json", buffer: Buffer.from("{\"sip\": {\"udp_port\": \"x\"}}") });
    await page.click("form[action='/backup/restore'] button[type=submit]");
    await page.waitForSelector("main .error");
    assert.match(await page.textContent("main .error"), /not restored.*sip\.udp_port/s);
    assert.equal((await api.get("/api/v1/config")).json.revision, before, "nothing changed");
    const backup = (await api.get("/api/v1/config/export")).text;
    const edited = JSON.parse(backup);
    edited.system.hostname = "restored-box";
    await page.setInputFiles("#backup", { name: "backup.json", mimeType: "application/json", buffer: Buffer.from(JSON.stringify(edited)) });
    await page.click("form[action='/backup/restore'] button[type=submit]");
    await page.waitForSelector(".flash");
    assert.match(await page.textContent(".flash"), /Restored/);
    assert.equal((await api.get("/api/v1/config/system")).json.hostname, "restored-box");
    await page.screenshot({ path: ARTIFACTS + "08-backup-restored.png" });

    // The other pages render and are accessible too.
    for (const path of ["/settings/network", "/settings/turn", "/turn", "/calls", "/backup", "/users", "/logs", "/audit", "/tls"]) {
      await page.goto(box.url + path);
      await checkAccessibility(page, path);
    }
    // A phone-sized screen still shows everything.
    await page.setViewportSize({ width: 390, height: 844 });
    await page.goto(box.url + "/settings/sip");
    await page.screenshot({ path: ARTIFACTS + "09-phone-settings.png", fullPage: true });
  } finally {
    await browser.close();
    await box.stop();
  }
});
