// Firmware updates per the contract: `branchgate bundle create|verify`, POST /api/v1/firmware/bundle
// (raw body, 202 or 4xx with the reason), GET /api/v1/firmware/install (progress), GET /api/v1/firmware
// (the other slot gets the new version), POST /api/v1/system/reboot (simulated backend: recorded).
// The PKI (a vendor CA and signer, another CA) is made here with the openssl CLI; no key is committed.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { mkdtempSync, mkdirSync, copyFileSync, readFileSync, writeFileSync } from "node:fs";
import { randomBytes } from "node:crypto";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBox, Api, BIN } from "./lib/box.mjs";

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
