// Firmware updates per the contract: `branchgate bundle create|verify`, POST /api/v1/firmware/bundle
// (raw body, 202 or 4xx with the reason), GET /api/v1/firmware/install (progress), GET /api/v1/firmware
// (the other slot gets the new version), POST /api/v1/system/reboot (simulated backend: recorded).
// The PKI (a vendor CA and signer, another CA) is made here with the openssl CLI; no key is committed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, copyFileSync, existsSync, readFileSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import AxeBuilder from "@axe-core/playwright";
import { startBox, Api, BIN, waitFor, CHROMIUM_ARGS, ARTIFACTS, adminPage } from "./lib/box.mjs";

function have(tool) {
  return spawnSync("sh", ["-c", `command -v ${tool}`]).status === 0;
}

function openssl(...args) {
  execFileSync("openssl", args, { stdio: ["ignore", "ignore", "pipe"] });
}

/** A CA and a signer it issued (EC P-256), in `dir` with prefix `name`. */
function pki(dir, name) {
  const p = (f) => join(dir, `${name}-${f}`);
  openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-keyout", p("ca.key"), "-out", p("ca.pem"), "-days", "30", "-subj", `/CN=${name} test CA`);
  openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-keyout", p("signer.key"), "-out", p("signer.csr"), "-subj", `/CN=${name} test signer`);
  openssl("x509", "-req", "-in", p("signer.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
    "-CAcreateserial", "-out", p("signer.pem"), "-days", "30");
  return { ca: p("ca.pem"), cert: p("signer.pem"), key: p("signer.key") };
}

function bundle(dir, signer, rootfs, version, compatible) {
  const out = join(dir, `b-${version}-${compatible}-${Math.random().toString(16).slice(2)}.raucb`);
  execFileSync(BIN, ["bundle", "create", "--cert", signer.cert, "--key", signer.key, "--version", version,
    "--rootfs", rootfs, "--compatible", compatible, "-o", out], { stdio: ["ignore", "pipe", "pipe"] });
  return out;
}

const upload = (api, bytes, headers = {}) =>
  api.request("POST", "/api/v1/firmware/bundle", { raw: bytes, headers: { "content-type": "application/octet-stream", ...headers } });

test("signed bundles: verify on the CLI, upload, install into the other slot, refusals with reasons", async (t) => {
  if (!have("mksquashfs") || !have("unsquashfs")) {
    t.skip("*** squashfs-tools missing (apt-get install squashfs-tools): firmware e2e SKIPPED ***");
    return;
  }
  const work = mkdtempSync(join(tmpdir(), "branchgate-fw-"));
  const vendor = pki(work, "vendor");
  const other = pki(work, "other");
  const rootfs = join(work, "rootfs.img");
  writeFileSync(rootfs, randomBytes(256 * 1024));

  const dataDir = mkdtempSync(join(tmpdir(), "branchgate-test-"));
  mkdirSync(join(dataDir, "firmware"));
  copyFileSync(vendor.ca, join(dataDir, "firmware", "keyring.pem"));
  const box = await startBox({ dataDir, provision: { admin: { password: "installer-secret-1" } } });
  try {
    const api = new Api(box.url);
    assert.equal((await api.get("/api/v1/firmware")).status, 401, "log in first");
    await api.login("admin", "installer-secret-1");
    const before = (await api.get("/api/v1/firmware")).json;
    assert.equal(before.backend, "simulated");
    assert.equal(before.booted, "A");
    const [a, b] = before.slots;
    assert.deepEqual({ ...a }, { name: "A", version: before.running_version, state: "booted", booted: true, good: true });
    assert.equal(b.name, "B");
    assert.equal(b.booted, false);
    const compatible = before.compatible;

    // The CLI: verify accepts a good bundle and prints its manifest; refuses another CA's.
    const good = bundle(work, vendor, rootfs, "99.1.0", compatible);
    const verified = spawnSync(BIN, ["bundle", "verify", "--keyring", vendor.ca, good], { encoding: "utf8" });
    assert.equal(verified.status, 0, verified.stderr);
    assert.match(verified.stdout, /version:\s+99\.1\.0/);
    assert.match(verified.stdout, new RegExp(`compatible:\\s+${compatible}`));
    const foreign = spawnSync(BIN, ["bundle", "verify", "--keyring", other.ca, good], { encoding: "utf8" });
    assert.notEqual(foreign.status, 0);
    assert.match(foreign.stderr, /not signed by a certificate of the keyring/);

    // Refusals, each with its reason, and nothing installed.
    const refusals = [
      ["wrong compatible", bundle(work, vendor, rootfs, "99.1.0", "branchgate-elsewhere"), 422, "incompatible", /wrong compatible/],
      ["downgrade", bundle(work, vendor, rootfs, "0.0.1", compatible), 422, "downgrade", /downgrade refused/],
      ["other CA", bundle(work, other, rootfs, "99.1.0", compatible), 422, "untrusted", /not signed by a certificate of the keyring/],
    ];
    for (const [what, file, status, reason, message] of refusals) {
      const r = await upload(api, readFileSync(file));
      assert.equal(r.status, status, `${what}: ${r.text}`);
      assert.equal(r.json.reason, reason, what);
      assert.match(r.json.error, message, what);
    }
    const tampered = Buffer.from(readFileSync(good));
    tampered[9000] ^= 0x01;
    let r = await upload(api, tampered);
    assert.equal(r.status, 422, r.text);
    assert.equal(r.json.reason, "tampered");
    assert.match(r.json.error, /payload tampered/);
    r = await upload(api, randomBytes(100 * 1024));
    assert.equal(r.status, 400, r.text);
    assert.equal(r.json.reason, "not_a_bundle");
    const afterRefusals = (await api.get("/api/v1/firmware/install")).json;
    assert.equal(afterRefusals.state, "failed");
    assert.match(afterRefusals.last_error, /not a bundle/);
    assert.notEqual((await api.get("/api/v1/firmware")).json.slots[1].version, "99.1.0");

    // A browser on another origin cannot upload.
    r = await upload(api, readFileSync(good), { origin: "https://evil.example" });
    assert.equal(r.status, 403);

    // Reboot before anything is installed: nothing to boot.
    assert.equal((await api.post("/api/v1/system/reboot")).status, 409);

    // The good bundle: 202, progress to 100, slot B has the new version.
    r = await upload(api, readFileSync(good));
    assert.equal(r.status, 202, r.text);
    assert.equal(r.json.version, "99.1.0");
    let progress;
    for (let i = 0; i < 200; i++) {
      progress = (await api.get("/api/v1/firmware/install")).json;
      if (progress.state === "done" || progress.state === "failed") break;
      assert.ok(progress.progress >= 0 && progress.progress <= 100);
      await new Promise((res) => setTimeout(res, 50));
    }
    assert.equal(progress.state, "done", JSON.stringify(progress));
    assert.equal(progress.progress, 100);
    assert.equal(progress.slot, "B");
    assert.equal(progress.last_error, null);
    const after = (await api.get("/api/v1/firmware")).json;
    assert.equal(after.booted, "A", "booted stays A until a reboot");
    const slotB = after.slots.find((s) => s.name === "B");
    assert.deepEqual({ ...slotB }, { name: "B", version: "99.1.0", state: "installed", booted: false, good: false });
    assert.ok(readFileSync(join(dataDir, "firmware", "slot-B.img")).equals(readFileSync(rootfs)), "slot B holds the image");

    // Reboot (admin): recorded by the simulated backend; the box keeps serving.
    r = await api.post("/api/v1/system/reboot");
    assert.equal(r.status, 202, r.text);
    assert.deepEqual(r.json, { slot: "B", simulated: true });
    assert.equal((await api.get("/api/v1/firmware")).json.pending_reboot, "B");
    assert.equal((await api.get("/api/v1/status")).status, 200);

    const audit = (await api.get("/api/v1/audit")).json.entries.map((e) => `${e.action}: ${e.detail}`).join("\n");
    assert.match(audit, /firmware: bundle refused: wrong compatible/);
    assert.match(audit, /firmware: bundle 99\.1\.0 .* accepted/);
    assert.match(audit, /reboot: reboot into slot B \(simulated\)/);

    const doc = (await api.get("/api/v1/openapi.json")).json;
    for (const path of ["/api/v1/firmware", "/api/v1/firmware/bundle", "/api/v1/firmware/install", "/api/v1/system/reboot"]) {
      assert.ok(doc.paths[path], `${path} in the OpenAPI document`);
    }
  } finally { await box.stop(); }
});

test("update history, choosing the next boot's slot, factory reset with and without the configuration", async (t) => {
  if (!have("mksquashfs") || !have("unsquashfs")) {
    t.skip("*** squashfs-tools missing (apt-get install squashfs-tools): firmware e2e SKIPPED ***");
    return;
  }
  const work = mkdtempSync(join(tmpdir(), "branchgate-fw-"));
  const vendor = pki(work, "vendor");
  const rootfs = join(work, "rootfs.img");
  writeFileSync(rootfs, randomBytes(64 * 1024));
  const dataDir = mkdtempSync(join(tmpdir(), "branchgate-test-"));
  mkdirSync(join(dataDir, "firmware"));
  copyFileSync(vendor.ca, join(dataDir, "firmware", "keyring.pem"));
  const box = await startBox({ dataDir, provision: { admin: { password: "installer-secret-1" }, sip: { domain: "provisioned.example" } } });
  const readyCount = () => box.stdout.split("admin UI ready").length - 1;
  try {
    let api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    const { compatible } = (await api.get("/api/v1/firmware")).json;
    let history = (await api.get("/api/v1/firmware/history")).json.entries;
    assert.deepEqual(history.map((e) => e.event), ["booted"], "the first start is recorded");

    assert.equal((await upload(api, readFileSync(bundle(work, vendor, rootfs, "0.0.1", compatible)))).status, 422);
    assert.equal((await upload(api, readFileSync(bundle(work, vendor, rootfs, "99.2.0", compatible)))).status, 202);
    await waitFor("the install", async () => (await api.get("/api/v1/firmware/install")).json.state === "done", 200, 50);

    // The next boot: back to A (cancels B), unknown and empty slots refused, then B again.
    let r = await api.post("/api/v1/firmware/slots/A/activate");
    assert.equal(r.status, 200, r.text);
    let fw = (await api.get("/api/v1/firmware")).json;
    assert.equal(fw.slots.find((s) => s.name === "B").state, "inactive");
    assert.equal((await api.post("/api/v1/system/reboot")).status, 409, "nothing waits for a reboot");
    r = await api.post("/api/v1/firmware/slots/C/activate");
    assert.equal(r.status, 404, r.text);
    assert.equal(r.json.reason, "no_such_slot");
    r = await api.post("/api/v1/firmware/slots/B/activate");
    assert.equal(r.status, 200, r.text);
    assert.equal((await api.post("/api/v1/system/reboot")).json.slot, "B");

    history = (await api.get("/api/v1/firmware/history")).json.entries;
    assert.deepEqual(history.map((e) => e.event),
      ["reboot", "slot_activated", "slot_activated", "installed", "installing", "refused", "booted"], "newest first");
    assert.equal(history[0].simulated, true);
    assert.equal(history[3].version, "99.2.0");
    assert.equal(history[3].slot, "B");
    assert.equal(history[3].by, "admin");
    assert.match(history[5].message, /downgrade refused/);
    assert.equal((await api.get("/api/v1/firmware/history?limit=2")).json.entries.length, 2);
    assert.equal((await api.get("/api/v1/firmware/history?limit=0")).status, 400, "a bad limit gets a clear error");

    // Factory reset keeping the configuration: site data goes, the configuration stays.
    assert.equal((await api.put("/api/v1/config/sip", { ...(await api.get("/api/v1/config/sip")).json, domain: "site.example" })).status, 200);
    writeFileSync(join(dataDir, "cdr.jsonl"), "{}\n");
    r = await api.post("/api/v1/system/factory-reset", {});
    assert.equal(r.status, 400, "keep_config must be said");
    assert.match(r.json.error, /keep_config/);
    const pid = box.child.pid;
    r = await api.post("/api/v1/system/factory-reset", { keep_config: true });
    assert.equal(r.status, 202, r.text);
    await waitFor("the restart", () => readyCount() === 2, 300);
    assert.equal(box.child.pid, pid, "the daemon replaced itself");
    assert.ok(!existsSync(join(dataDir, "cdr.jsonl")), "call records wiped");
    assert.ok(existsSync(join(dataDir, "firmware", "keyring.pem")), "the firmware keyring stays");
    api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    assert.equal((await api.get("/api/v1/config/sip")).json.domain, "site.example", "configuration kept");
    history = (await api.get("/api/v1/firmware/history")).json.entries;
    assert.equal(history[0].event, "factory_reset");
    assert.match(history[0].message, /configuration kept.*cdr\.jsonl/);

    // Without the configuration: the box starts as new (here: provisioned again, zero-touch).
    r = await api.post("/api/v1/system/factory-reset", { keep_config: false });
    assert.equal(r.status, 202, r.text);
    await waitFor("the restart", () => readyCount() === 3, 300);
    api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    assert.equal((await api.get("/api/v1/config/sip")).json.domain, "provisioned.example", "configuration wiped");
    assert.equal((await api.get("/api/v1/config")).json.revision, 1, "a fresh store");
    assert.match((await api.get("/api/v1/firmware/history")).json.entries[0].message, /configuration wiped/);
  } finally { await box.stop(); }
});

test("the firmware page: upload with progress, the form without script, refusals shown, next boot's slot, history", async (t) => {
  if (!have("mksquashfs") || !have("unsquashfs")) {
    t.skip("*** squashfs-tools missing (apt-get install squashfs-tools): firmware e2e SKIPPED ***");
    return;
  }
  const work = mkdtempSync(join(tmpdir(), "branchgate-fw-"));
  const vendor = pki(work, "vendor");
  const rootfs = join(work, "rootfs.img");
  writeFileSync(rootfs, randomBytes(2 * 1024 * 1024));
  const dataDir = mkdtempSync(join(tmpdir(), "branchgate-test-"));
  mkdirSync(join(dataDir, "firmware"));
  copyFileSync(vendor.ca, join(dataDir, "firmware", "keyring.pem"));
  const box = await startBox({ dataDir, provision: { admin: { password: "installer-secret-1" } } });
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS });
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    const { compatible } = (await api.get("/api/v1/firmware")).json;

    // With the page's script: the upload goes to the API with a progress bar, then the page
    // follows the install and reloads with the new slot table and history.
    const page = await adminPage(browser, box, "installer-secret-1", { width: 1280, height: 1400 });
    page.on("dialog", (dialog) => dialog.accept());
    await page.goto(box.url + "/firmware");
    const bad = (await new AxeBuilder({ page }).analyze()).violations.filter((v) => ["serious", "critical"].includes(v.impact));
    assert.deepEqual(bad.map((v) => `${v.id}: ${v.nodes.map((n) => n.target).join(" ")}`), []);
    assert.match(await page.textContent("#slots tbody tr:first-child"), /A\s+running/);
    assert.match(await page.textContent("#install-status"), /No install is running/);
    await page.setInputFiles("#bundle", bundle(work, vendor, rootfs, "99.3.0", compatible));
    await page.click("#upload-form button[type=submit]");
    await page.waitForFunction(() => /Installed 99\.3\.0 into slot B/.test(document.getElementById("install-status").textContent),
      null, { timeout: 20000 });
    await page.waitForFunction(() => /99\.3\.0/.test(document.querySelector("#slots").textContent), null, { timeout: 10000 });
    const slotB = await page.textContent("#slots tbody tr:nth-child(2)");
    assert.match(slotB, /99\.3\.0/);
    assert.match(slotB, /installed/);
    const history = await page.textContent("#history tbody");
    assert.match(history, /Installed/);
    assert.match(history, /Booted/);

    // The script's refusal: a downgrade, said on the page.
    await page.setInputFiles("#bundle", bundle(work, vendor, rootfs, "0.0.2", compatible));
    await page.click("#upload-form button[type=submit]");
    await page.waitForFunction(() => /Not installed: downgrade refused/.test(document.getElementById("install-status").textContent),
      null, { timeout: 10000 });

    // The next boot: back to slot A from its button (confirmed), flash shown, B no longer pending.
    await page.click("#slots tbody tr:first-child button");
    await page.waitForURL((u) => u.search.includes("done=slot-activated"));
    assert.match(await page.textContent(".flash"), /starts at the next reboot/);
    assert.match(await page.textContent("#slots tbody tr:nth-child(2)"), /inactive/);
    await page.screenshot({ path: ARTIFACTS + "firmware-page.png", fullPage: true });

    // Without script: the multipart form. A downgrade is refused on the page (422) and nothing
    // is installed; ticking "allow an older version" (admin) installs it.
    const plain = await browser.newContext({ ignoreHTTPSErrors: true, javaScriptEnabled: false });
    const form = await plain.newPage();
    await form.goto(box.url + "/login");
    await form.fill("#username", "admin");
    await form.fill("#password", "installer-secret-1");
    await form.click("main form button[type=submit]");
    await form.waitForURL((u) => !u.pathname.startsWith("/login"));
    await form.goto(box.url + "/firmware");
    const older = bundle(work, vendor, rootfs, "0.0.3", compatible);
    await form.setInputFiles("#bundle", older);
    const [refusal] = await Promise.all([
      form.waitForResponse((r) => r.url().endsWith("/firmware/upload")),
      form.click("#upload-form button[type=submit]"),
    ]);
    assert.equal(refusal.status(), 422);
    assert.match(await form.textContent("main .error"), /Not done: downgrade refused/);
    await form.setInputFiles("#bundle", older);
    await form.check("input[name=force]");
    await form.click("#upload-form button[type=submit]");
    await form.waitForURL((u) => u.search.includes("done=firmware-installing"));
    await waitFor("the forced install", async () => (await api.get("/api/v1/firmware/install")).json.state === "done", 200, 50);
    assert.equal((await api.get("/api/v1/firmware")).json.slots.find((s) => s.name === "B").version, "0.0.3");
    await form.goto(box.url + "/firmware");
    assert.match(await form.innerText("#history tbody tr:first-child"), /Installed\s+0\.0\.3\s+B\s+admin/);

    // The factory reset form refuses a request that says nothing about the configuration.
    const noChoice = await form.request.post(box.url + "/firmware/factory-reset", { form: { keep: "1" } });
    assert.equal(noChoice.status(), 400);
    assert.match(await noChoice.text(), /Choose what the reset erases/);
  } finally {
    await browser.close();
    await box.stop();
  }
});
