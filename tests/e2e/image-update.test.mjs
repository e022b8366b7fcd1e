// The bootable image under qemu (TCG, OVMF) and signed A/B updates through the web API, with the
// box's own RAUC (D-Bus), GRUB's A/B logic and the daemon's boot health check — nothing simulated.
//
// tests/image/build.sh makes a fresh disk (slot A 1.0.0) from the binary under test and three
// bundles (2.0.0; 3.0.0 --unhealthy, whose SIP service cannot start; 4.0.0), signed by the image's
// dev PKI. Then, with the admin on a forwarded port of 127.0.0.1:
//   1. boot A, its health check marks it good; log in with the first-login password from the
//      console, change it, add a SIP user (must survive to the end);
//   2. v2 uploaded → RAUC installs it into B → reboot → B boots and is marked good;
//      a tampered and an unsigned bundle are refused (4xx, reason and message);
//   3. v3 (unhealthy) → A → reboot → the health check fails, the box reboots itself and GRUB
//      falls back to B, which is marked good again;
//   4. power cut: qemu is killed (SIGKILL) while RAUC writes v4 into A → the box boots B and
//      reports the install as interrupted;
//   5. the password and the SIP user from step 1 are still there.
// Every qemu runs under `timeout -s KILL` (tests/image/qemu.sh). Needs root (packages, qemu) and
// the release binary (what `./x image` puts on a box; `./x test` builds it and passes
// BRANCHGATE_RELEASE_BIN): under software emulation a debug build takes minutes per upload.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import { existsSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { ARTIFACTS, Api, freePort } from "./lib/box.mjs";

const BUILD = new URL("../image/build.sh", import.meta.url).pathname;
const QEMU = new URL("../image/qemu.sh", import.meta.url).pathname;
const WORK = join(ARTIFACTS, "image-e2e");
const root = process.getuid?.() === 0;
const BIN = process.env.BRANCHGATE_RELEASE_BIN || new URL("../../target/release/branchgate", import.meta.url).pathname;
const skip = !root ? "needs root (apt-get, qemu)"
  : !existsSync(BIN) ? `*** no release binary at ${BIN} (cargo build --release -p branchgate): image update test SKIPPED ***`
  : false;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const seconds = (since) => ((Date.now() - since) / 1000).toFixed(1);

// qemu must not outlive the test, whatever ends it.
const running = new Set();
process.on("exit", () => {
  for (const vm of running) {
    try { process.kill(Number(readFileSync(vm.pidfile, "utf8").trim()), "SIGKILL"); } catch { /* gone */ }
  }
});

/** The console of one qemu run, read from its serial file (colours and CRs removed). */
class Vm {
  /** `usb`: a raw disk image plugged in as a USB stick. */
  constructor(name, disk, port, { usb } = {}) {
    this.name = name;
    this.serial = join(WORK, `serial-${name}.log`);
    this.pidfile = join(WORK, `qemu-${name}.pid`);
    rmSync(this.serial, { force: true });
    rmSync(this.pidfile, { force: true });
    writeFileSync(this.serial, "");
    this.child = spawn("bash", [QEMU, disk], {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, IMAGE_WORK: WORK, QEMU_SERIAL: this.serial, QEMU_PIDFILE: this.pidfile, QEMU_TIMEOUT: "1200", ADMIN_PORT: String(port),
        ...(usb ? { QEMU_USB: usb } : {}) },
    });
    this.stderr = "";
    this.child.stderr.on("data", (d) => { this.stderr += d; });
    this.exited = new Promise((resolve) => this.child.on("exit", resolve));
    running.add(this);
    this.exited.then(() => running.delete(this));
  }

  text() {
    let raw = "";
    try { raw = readFileSync(this.serial, "utf8"); } catch { /* not yet */ }
    return raw.replace(/\r/g, "").replace(/\x1b\[[0-9;?]*[a-zA-Z]/g, "");
  }

  /** Where the console is now: later waits look only after it. */
  mark() { return this.text().length; }

  context() { return `--- qemu ${this.name} stderr ---\n${this.stderr}\n--- serial ${this.serial} (tail) ---\n${this.text().slice(-5000)}`; }

  /** Waits for `pattern` on the console after `from`; returns the match. */
  async waitFor(pattern, { from = 0, timeoutMs = 120_000 } = {}) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const match = this.text().slice(from).match(pattern);
      if (match) return match;
      if (this.child.exitCode !== null || this.child.signalCode !== null) assert.fail(`qemu exited while waiting for ${pattern}\n${this.context()}`);
      if (Date.now() > deadline) assert.fail(`${pattern} not on the console within ${timeoutMs / 1000} s\n${this.context()}`);
      await sleep(250);
    }
  }

  /** A power cut: qemu (not the timeout wrapper) killed with SIGKILL. */
  async kill() {
    if (this.child.exitCode !== null || this.child.signalCode !== null) return;
    let pid = null;
    try { pid = Number(readFileSync(this.pidfile, "utf8").trim()); } catch { /* not started */ }
    if (pid) { try { process.kill(pid, "SIGKILL"); } catch { /* gone */ } }
    const gone = await Promise.race([this.exited.then(() => true), sleep(10_000).then(() => false)]);
    if (!gone) this.child.kill("SIGKILL");
    await this.exited;
  }
}

function run(args, env = {}) {
  const r = spawnSync("bash", args, { env: { ...process.env, BRANCHGATE_BIN: BIN, IMAGE_WORK: WORK, ...env }, encoding: "utf8", timeout: 600_000 });
  assert.equal(r.status, 0, `bash ${args.join(" ")}\n${r.stdout}\n${r.stderr}`);
  return r.stderr;
}

/** Runs the bundle builds in the background (while the first boot runs); resolves when all are made. */
function buildBundles(specs) {
  return new Promise((resolve, reject) => {
    const script = specs.map(([version, file, flag]) => `bash ${BUILD} bundle ${version} ${file} ${flag || ""}`).join(" && ");
    const child = spawn("nice", ["-n", "10", "bash", "-c", script], {
      stdio: ["ignore", "ignore", "pipe"],
      env: { ...process.env, BRANCHGATE_BIN: BIN, IMAGE_WORK: WORK },
    });
    let stderr = "";
    child.stderr.on("data", (d) => { stderr += d; });
    child.on("exit", (code) => (code === 0 ? resolve(stderr) : reject(new Error(`bundle build failed (${code})\n${stderr}`))));
  });
}

const upload = (api, bytes) =>
  api.request("POST", "/api/v1/firmware/bundle", { raw: bytes, headers: { "content-type": "application/octet-stream" } });

/** Logs in again (a reboot ends every session), waiting for the admin behind the forwarded port. */
async function login(url, password, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const api = new Api(url);
    try {
      const r = await api.post("/api/v1/session", { username: "admin", password });
      if (r.status === 200) return api;
      if (Date.now() > deadline) assert.fail(`login: ${r.status} ${r.text}`);
    } catch (e) {
      if (Date.now() > deadline) throw e;
    }
    await sleep(500);
  }
}

/** Polls the install until it ends; returns the last state and every progress value seen. */
async function followInstall(api, { timeoutMs = 300_000, until } = {}) {
  const deadline = Date.now() + timeoutMs;
  const seen = [];
  for (;;) {
    const r = await api.get("/api/v1/firmware/install");
    assert.equal(r.status, 200, r.text);
    const s = r.json;
    if (seen.at(-1) !== s.progress) seen.push(s.progress);
    if (until?.(s)) return { status: s, seen };
    if (s.state === "done" || s.state === "failed") return { status: s, seen };
    assert.ok(Date.now() < deadline, `install not done in ${timeoutMs / 1000} s: ${JSON.stringify(s)}`);
    await sleep(300);
  }
}

async function firmware(api) {
  const r = await api.get("/api/v1/firmware");
  assert.equal(r.status, 200, r.text);
  return r.json;
}

const slot = (fw, name) => fw.slots.find((s) => s.name === name);

test("image: A/B updates through the web API under qemu — install, health check, fallback, refusals, power cut, config kept",
  { skip, timeout: 1_800_000 }, async (t) => {
    const started = Date.now();
    const times = {};
    const log = (what) => { times[what] = seconds(started); t.diagnostic(`${what}: ${times[what]} s`); };

    rmSync(join(WORK, "disk.img"), { force: true });
    rmSync(join(WORK, "disk.img.ovmf-vars"), { force: true });
    run([BUILD, "image"]);
    log("image built");
    const disk = join(WORK, "disk.img");
    const bundles = { v2: join(WORK, "v2.raucb"), v3: join(WORK, "v3-unhealthy.raucb"), v4: join(WORK, "v4.raucb") };
    const bundlesBuilt = buildBundles([["2.0.0", bundles.v2], ["3.0.0", bundles.v3, "--unhealthy"], ["4.0.0", bundles.v4]]);
    bundlesBuilt.catch(() => {}); // awaited below

    const port = await freePort();
    const url = `https://127.0.0.1:${port}`;
    let vm = new Vm("1", disk, port);
    try {
      // 1. First boot: slot A, RAUC on the bus, health check, first login, a configuration change.
      await vm.waitFor(/branchgate: booting slot A, firmware 1\.0\.0/);
      const first = await vm.waitFor(/first login: user admin, password (\S+)/);
      log("boot 1: admin ready");
      assert.doesNotMatch(vm.text(), /RAUC does not answer on D-Bus/, vm.context());
      await vm.waitFor(/boot health check passed, slot A marked good/, { timeoutMs: 90_000 });
      log("boot 1: slot A marked good");
      let api = await login(url, first[1]);
      const password = "field-tech-pass-1";
      let r = await api.put("/api/v1/session/password", { current_password: first[1], new_password: password });
      assert.equal(r.status, 200, r.text);
      r = await api.put("/api/v1/config/sip", { users: [{ username: "2001", password: "sip-secret-2001" }] });
      assert.equal(r.status, 200, r.text);
      let fw = await firmware(api);
      assert.equal(fw.backend, "rauc", JSON.stringify(fw));
      assert.equal(fw.booted, "A");
      assert.equal(fw.running_version, "1.0.0");
      assert.equal(slot(fw, "A").good, true, JSON.stringify(fw));

      await bundlesBuilt;
      log("bundles built");

      // 2. v2 into B through the web API, reboot, B marked good.
      r = await upload(api, readFileSync(bundles.v2));
      assert.equal(r.status, 202, r.text);
      assert.equal(r.json.version, "2.0.0");
      let install = await followInstall(api);
      assert.equal(install.status.state, "done", JSON.stringify(install));
      assert.equal(install.status.progress, 100);
      assert.equal(install.status.slot, "B");
      t.diagnostic(`progress seen: ${install.seen.join(" ")}`);
      log("v2 installed");
      fw = await firmware(api);
      assert.deepEqual({ ...slot(fw, "B") }, { name: "B", version: "2.0.0", state: "installed", booted: false, good: true }, JSON.stringify(fw));
      assert.equal(fw.pending_reboot, "B");
      let mark = vm.mark();
      r = await api.post("/api/v1/system/reboot");
      assert.equal(r.status, 202, r.text);
      assert.deepEqual(r.json, { slot: "B", simulated: false });
      await vm.waitFor(/branchgate: booting slot B, firmware 2\.0\.0/, { from: mark });
      await vm.waitFor(/boot health check passed, slot B marked good/, { from: mark, timeoutMs: 120_000 });
      log("boot 2: slot B (2.0.0) marked good");
      api = await login(url, password);
      fw = await firmware(api);
      assert.equal(fw.booted, "B");
      assert.equal(fw.running_version, "2.0.0");
      assert.equal(slot(fw, "B").good, true, JSON.stringify(fw));

      // Refused before RAUC sees them: a payload byte changed, and no signature at all.
      const good = readFileSync(bundles.v2);
      const tampered = Buffer.from(good);
      tampered[9000] ^= 0x01;
      r = await upload(api, tampered);
      assert.equal(r.status, 422, r.text);
      assert.equal(r.json.reason, "tampered");
      assert.match(r.json.error, /payload tampered/);
      const cmsLength = Number(good.readBigUInt64BE(good.length - 8));
      const unsigned = Buffer.concat([good.subarray(0, good.length - 8 - cmsLength), Buffer.alloc(8)]);
      r = await upload(api, unsigned);
      assert.equal(r.status, 400, r.text);
      assert.equal(r.json.reason, "not_a_bundle");
      assert.match(r.json.error, /no signature/);
      fw = await firmware(api);
      assert.equal(fw.booted, "B");
      assert.notEqual(slot(fw, "A").state, "installed", "nothing installed by a refused bundle");
      log("tampered and unsigned refused");

      // 3. v3 fails its boot health check: the box reboots itself and GRUB falls back to B.
      r = await upload(api, readFileSync(bundles.v3));
      assert.equal(r.status, 202, r.text);
      install = await followInstall(api);
      assert.equal(install.status.state, "done", JSON.stringify(install));
      assert.equal(install.status.slot, "A");
      log("v3 installed");
      mark = vm.mark();
      r = await api.post("/api/v1/system/reboot");
      assert.equal(r.status, 202, r.text);
      assert.equal(r.json.slot, "A");
      await vm.waitFor(/branchgate: booting slot A, firmware 3\.0\.0/, { from: mark });
      await vm.waitFor(/boot health check FAILED/, { from: mark, timeoutMs: 150_000 });
      log("boot 3: v3 health check failed");
      await vm.waitFor(/branchgate: booting slot B, firmware 2\.0\.0/, { from: mark });
      await vm.waitFor(/boot health check passed, slot B marked good/, { from: mark, timeoutMs: 120_000 });
      log("boot 4: fell back to slot B, marked good");
      assert.doesNotMatch(vm.text().slice(mark), /slot A marked good/);
      api = await login(url, password);
      fw = await firmware(api);
      assert.equal(fw.booted, "B");
      assert.equal(fw.running_version, "2.0.0");
      assert.equal(slot(fw, "A").good, false, JSON.stringify(fw));
      t.diagnostic(`after the fallback: ${JSON.stringify(fw.slots)}`);

      // 4. Power cut while RAUC writes v4 into A (its console says when it starts writing the
      // slot): the box comes back on B.
      mark = vm.mark();
      r = await upload(api, readFileSync(bundles.v4));
      assert.equal(r.status, 202, r.text);
      await vm.waitFor(/writing data to device \/dev\/disk\/by-partlabel\/rootfs_a/, { from: mark, timeoutMs: 120_000 });
      const during = (await api.get("/api/v1/firmware/install")).json;
      await sleep(500);
      const console4 = vm.text().slice(mark);
      await vm.kill();
      log(`power cut at ${during.progress} %`);
      assert.equal(during.state, "installing", JSON.stringify(during));
      assert.doesNotMatch(console4, /Updating slot rootfs\.0 done/, "the cut came while the slot was being written");
      // The box comes back with a USB stick plugged in (a FAT file system without partition
      // table, as many sticks are), holding v3.
      const stick = join(WORK, "stick.img");
      rmSync(stick, { force: true });
      run(["-c", `mkfs.vfat -C -n STICK ${stick} 65536 >/dev/null && mcopy -i ${stick} ${bundles.v3} ::/branchgate-3.0.0.raucb`]);
      vm = new Vm("2", disk, port, { usb: stick });
      await vm.waitFor(/branchgate: booting slot B, firmware 2\.0\.0/);
      await vm.waitFor(/boot health check passed, slot B marked good/, { timeoutMs: 120_000 });
      log("boot 5: slot B after the power cut");
      api = await login(url, password);
      fw = await firmware(api);
      assert.equal(fw.booted, "B");
      assert.equal(fw.running_version, "2.0.0");
      assert.notEqual(slot(fw, "A").state, "installed", JSON.stringify(fw));
      assert.notEqual(slot(fw, "A").version, "4.0.0", JSON.stringify(fw));
      assert.equal(slot(fw, "A").good, false, "RAUC marked A not bootable before writing it");
      // The box says what happened to the install.
      const after = (await api.get("/api/v1/firmware/install")).json;
      assert.equal(after.state, "failed", JSON.stringify(after));
      assert.equal(after.version, "4.0.0");
      assert.match(after.last_error, /interrupted/);
      t.diagnostic(`after the power cut: ${JSON.stringify(fw.slots)}`);

      // The stick: mounted read-only by the daemon, its bundle checked like an upload.
      const usb = (await api.get("/api/v1/firmware/usb")).json;
      const onStick = usb.bundles.find((b) => b.path.endsWith("/branchgate-3.0.0.raucb"));
      assert.ok(onStick, JSON.stringify(usb));
      assert.match(onStick.path, /^\/run\/branchgate\/usb\/sd[a-z]\d*\//);
      assert.equal(onStick.version, "3.0.0", JSON.stringify(onStick));
      assert.equal(onStick.refused, null, JSON.stringify(onStick));
      assert.match(vm.text(), /USB stick mounted read-only/);
      log("USB stick mounted, its bundle listed");

      // 5. What was configured on 1.0.0 before the first update is still there.
      const sip = (await api.get("/api/v1/config/sip")).json;
      assert.deepEqual(sip.users.map((u) => u.username), ["2001"], JSON.stringify(sip));
      log("configuration kept");
    } finally {
      await vm.kill();
      t.diagnostic(`times (s since start): ${JSON.stringify(times)}`);
    }
  });
