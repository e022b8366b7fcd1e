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
import { startDdiStub } from "./lib/ddi-stub.mjs";

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

/** Skips the test (loudly) on a machine without squashfs-tools. */
function squashfsMissing(t) {
  if (have("mksquashfs") && have("unsquashfs")) return false;
  t.skip("*** squashfs-tools missing (apt-get install squashfs-tools): firmware e2e SKIPPED ***");
  return true;
}

/**
 * A vendor PKI and a random rootfs image of `rootfsBytes` in a work directory, and a box whose
 * keyring trusts that vendor (admin password installer-secret-1; `provision` and `args` added).
 */
async function firmwareBox({ rootfsBytes, provision = {}, args = [] }) {
  const work = mkdtempSync(join(tmpdir(), "branchgate-fw-"));
  const vendor = pki(work, "vendor");
  const rootfs = join(work, "rootfs.img");
  writeFileSync(rootfs, randomBytes(rootfsBytes));
  const dataDir = mkdtempSync(join(tmpdir(), "branchgate-test-"));
  mkdirSync(join(dataDir, "firmware"));
  copyFileSync(vendor.ca, join(dataDir, "firmware", "keyring.pem"));
  const box = await startBox({ dataDir, provision: { admin: { password: "installer-secret-1" }, ...provision }, args });
  return { work, vendor, rootfs, dataDir, box };
}

const upload = (api, bytes, headers = {}) =>
  api.request("POST", "/api/v1/firmware/bundle", { raw: bytes, headers: { "content-type": "application/octet-stream", ...headers } });

test("signed bundles: verify on the CLI, upload, install into the other slot, refusals with reasons", async (t) => {
  if (squashfsMissing(t)) return;
  const { work, vendor, rootfs, dataDir, box } = await firmwareBox({ rootfsBytes: 256 * 1024 });
  const other = pki(work, "other");
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
  if (squashfsMissing(t)) return;
  const { work, vendor, rootfs, dataDir, box } = await firmwareBox({ rootfsBytes: 64 * 1024, provision: { sip: { domain: "provisioned.example" } } });
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
  if (squashfsMissing(t)) return;
  const { work, vendor, rootfs, box } = await firmwareBox({ rootfsBytes: 2 * 1024 * 1024 });
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

test("fleet rollout from a hawkBit DDI server: attributes, refusals closed with the reason, install with progress, reboot, success after the boot, cancel", async (t) => {
  if (squashfsMissing(t)) return;
  const token = "d6b3f1a0c9e84f2b" + randomBytes(8).toString("hex");
  const ddi = await startDdiStub({ token });
  const { work, vendor, rootfs, box } = await firmwareBox({ rootfsBytes: 1024 * 1024,
    provision: { update: { hawkbit_url: ddi.url, hawkbit_controller_id: "branch-0042", hawkbit_target_token: token } } });
  try {
    let api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    const { compatible, running_version } = (await api.get("/api/v1/firmware")).json;

    // The first poll: the server wants the attributes; every request carried the token (the
    // stub answers 401 otherwise) and the token never shows in the API.
    await waitFor("the attributes", () => ddi.configData.length > 0, 100);
    assert.equal(ddi.controller, "branch-0042");
    assert.deepEqual(ddi.configData[0], { mode: "merge",
      data: { firmware: running_version, compatible, slot: "A", hostname: ddi.configData[0].data.hostname } });
    const config = (await api.get("/api/v1/config/update")).json;
    assert.ok(!JSON.stringify(config).includes(token), "the token is redacted");
    let fleet = (await api.get("/api/v1/firmware")).json.hawkbit;
    assert.equal(fleet.controller, `${ddi.url}/DEFAULT/controller/v1/branch-0042`);
    assert.ok(fleet.last_poll_ms > 0 && fleet.last_error === null, JSON.stringify(fleet));

    // A bundle whose hash is not the announced one, then a downgrade: closed as failures with the reason.
    const bad = ddi.deploy(bundle(work, vendor, rootfs, "99.5.0", compatible), "99.5.0", { sha256: "00".repeat(32) });
    await waitFor("the hash refusal", () => bad.closed, 100);
    assert.equal(bad.closed, "failure");
    assert.match(ddi.feedbackOf(bad.id).at(-1).details[0], /SHA-256 is [0-9a-f]{64}, the server announced 0000/);
    const old = ddi.deploy(bundle(work, vendor, rootfs, "0.0.4", compatible), "0.0.4");
    await waitFor("the downgrade refusal", () => old.closed, 100);
    assert.match(ddi.feedbackOf(old.id).at(-1).details[0], /downgrade refused/);
    assert.equal((await api.get("/api/v1/firmware")).json.slots[1].version, null, "nothing installed");

    // The good bundle: downloaded, installed into B with progress, reboot asked; open until the boot.
    const good = ddi.deploy(bundle(work, vendor, rootfs, "99.5.0", compatible), "99.5.0");
    await waitFor("the install", () => ddi.feedbackOf(good.id).some((f) => /installed into slot B/.test(f.details[0])), 200);
    const steps = ddi.feedbackOf(good.id);
    assert.ok(steps.every((f) => f.execution === "proceeding"), JSON.stringify(steps));
    assert.match(steps[0].details[0], /downloading b-99\.5\.0/);
    assert.ok(steps.some((f) => f.result.progress && f.result.progress.of === 100), "progress reported");
    assert.match(steps.at(-1).details[0], /99\.5\.0 installed into slot B; rebooting into it/);
    const firmware = (await api.get("/api/v1/firmware")).json;
    assert.equal(firmware.slots[1].version, "99.5.0");
    assert.equal(firmware.pending_reboot, "B");
    const history = (await api.get("/api/v1/firmware/history")).json.entries;
    assert.deepEqual(history.slice(0, 3).map((e) => [e.event, e.by]), [["reboot", "hawkbit"], ["installed", "hawkbit"], ["installing", "hawkbit"]]);
    assert.ok(history.some((e) => e.event === "refused" && e.by === "hawkbit" && /downgrade/.test(e.message)));
    assert.ok(history.some((e) => e.event === "install_failed" && /SHA-256/.test(e.message)));
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(good.closed, false, "not reported before the new version runs");
    assert.equal(ddi.feedbackOf(good.id).filter((f) => /downloading/.test(f.details[0])).length, 1, "installed once");
    // Withdrawn now, it cannot be taken back: the box says so (and still reports after the boot).
    ddi.cancel = { id: "c0", stopId: good.id };
    await waitFor("the refused cancel", () => ddi.cancelFeedback.length === 1, 100);
    assert.equal(ddi.cancelFeedback[0].execution, "rejected", JSON.stringify(ddi.cancelFeedback[0]));
    assert.match(ddi.cancelFeedback[0].details[0], /installed and waits for its reboot/);

    // The boot into the new slot (the simulated backend: a start with the new version): the
    // server hears success once the slot is good.
    await box.restart(["--firmware-version", "99.5.0"]);
    await waitFor("the report after the boot", () => good.closed, 100);
    assert.equal(good.closed, "success");
    assert.match(ddi.feedbackOf(good.id).at(-1).details[0], /running 99\.5\.0 from slot B; it passed its health check/);

    // A cancel with nothing running is confirmed.
    ddi.cancel = { id: "c1", stopId: "77" };
    await waitFor("the cancel", () => ddi.cancelFeedback.length === 2, 100);
    assert.equal(ddi.cancelFeedback[1].execution, "closed");
    assert.equal(ddi.cancelFeedback[1].result.finished, "success");
    api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    fleet = (await api.get("/api/v1/firmware")).json.hawkbit;
    assert.match(fleet.action, /cancel of action 77/);

    // Switched off in the configuration: the polls stop.
    const update = (await api.get("/api/v1/config/update")).json;
    assert.equal((await api.put("/api/v1/config/update", { ...update, hawkbit_url: null })).status, 200);
    await new Promise((r) => setTimeout(r, 300));
    const polls = ddi.requests.length;
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal(ddi.requests.length, polls, "no polls once hawkBit is off");
    assert.equal((await api.get("/api/v1/firmware")).json.hawkbit.controller, null);
  } finally {
    await box.stop();
    await ddi.close();
  }
});

test("bundles on a USB stick: listed with the check's verdict, installed from the page after confirmation", async (t) => {
  if (squashfsMissing(t)) return;
  // The media root as an automounter leaves it: <root>/<label>/<file>.
  const media = mkdtempSync(join(tmpdir(), "branchgate-media-"));
  mkdirSync(join(media, "STICK"));
  const { work, vendor, rootfs, box } = await firmwareBox({ rootfsBytes: 512 * 1024, args: ["--usb-root", media] });
  const other = pki(work, "other");
  const browser = await chromium.launch({ executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS });
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    const { compatible } = (await api.get("/api/v1/firmware")).json;
    let usb = (await api.get("/api/v1/firmware/usb")).json;
    assert.deepEqual(usb, { roots: [media], bundles: [] });

    const good = join(media, "STICK", "branchgate-99.6.0.raucb");
    copyFileSync(bundle(work, vendor, rootfs, "99.6.0", compatible), good);
    const foreign = join(media, "STICK", "foreign.raucb");
    copyFileSync(bundle(work, other, rootfs, "99.7.0", compatible), foreign);
    usb = (await api.get("/api/v1/firmware/usb")).json;
    assert.equal(usb.bundles.length, 2, JSON.stringify(usb));
    const [listedGood, listedForeign] = usb.bundles;
    assert.equal(listedGood.path, good);
    assert.equal(listedGood.version, "99.6.0");
    assert.equal(listedGood.refused, null);
    assert.equal(listedForeign.reason, "untrusted");
    assert.match(listedForeign.refused, /not signed by a certificate of the keyring/);

    let r = await api.post("/api/v1/firmware/usb/install", { path: foreign });
    assert.equal(r.status, 422, r.text);
    assert.equal(r.json.reason, "untrusted");
    r = await api.post("/api/v1/firmware/usb/install", { path: "/etc/passwd" });
    assert.equal(r.status, 404, r.text);
    assert.equal(r.json.reason, "not_found");
    assert.equal((await api.post("/api/v1/firmware/usb/install", {})).status, 400);

    // The page lists both; the installable one has an Install button (confirmed), the other says why not.
    const page = await adminPage(browser, box, "installer-secret-1", { width: 1280, height: 1400 });
    page.on("dialog", (dialog) => dialog.accept());
    await page.goto(box.url + "/firmware");
    assert.match(await page.innerText("#usb tbody tr:nth-child(1)"), /99\.6\.0\s+signed by the vendor, installable/);
    assert.match(await page.innerText("#usb tbody tr:nth-child(2)"), /Not signed by a certificate of the keyring/);
    assert.equal(await page.locator("#usb tbody tr:nth-child(2) button").count(), 0);
    await page.screenshot({ path: ARTIFACTS + "firmware-usb.png", fullPage: true });
    await page.click("#usb tbody tr:nth-child(1) button");
    await page.waitForURL((u) => u.search.includes("done=firmware-installing"));
    await waitFor("the install", async () => (await api.get("/api/v1/firmware/install")).json.state === "done", 200, 50);
    assert.equal((await api.get("/api/v1/firmware")).json.slots.find((s) => s.name === "B").version, "99.6.0");
    assert.ok(existsSync(good), "the stick's file stays (the box installs a copy)");
    const [installed] = (await api.get("/api/v1/firmware/history")).json.entries;
    assert.deepEqual([installed.event, installed.version, installed.by], ["installed", "99.6.0", "admin"]);
    const audit = (await api.get("/api/v1/audit")).json.entries.map((e) => e.detail).join("\n");
    assert.match(audit, /bundle 99\.6\.0 from USB .* accepted/);
    assert.match(audit, /USB bundle refused/);
  } finally {
    await browser.close();
    await box.stop();
  }
});
