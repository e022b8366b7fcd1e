// The HAL against real kernel drivers: tests/vm/run.sh boots Debian's kernel in qemu (TCG)
// with our binary, vivid, snd-aloop, snd-dummy and i6300esb; `branchgate hal selftest` runs
// inside. Checked here: the real backends were chosen (nothing simulated), vivid's formats,
// frame sizes and controls were enumerated and frames captured, vivid's picture went through
// our camera pipeline (v4l2src in YUYV, videoconvert, x264enc, RTP) for 4 s — restarted at
// another size half-way, the viewer kept —, the 1 kHz tone
// came back through the ALSA loopback, the mixer's volume was set and read back, the
// watchdog (i6300ESB) was petted and disarmed; then the daemon's health loop kept the VM up
// past three timeouts, and once the daemon was killed the watchdog reset the VM (a second boot).
// The kernel .deb is cached in tests/artifacts/vm/cache; the script installs what it needs.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { BIN, ARTIFACTS } from "./lib/box.mjs";

const SCRIPT = new URL("../vm/run.sh", import.meta.url).pathname;
const WORK = join(ARTIFACTS, "vm");
const root = process.getuid?.() === 0;

test("hal in a VM: vivid, ALSA loopback tone, mixer, i6300esb petted by the daemon, reset after it is killed", { skip: !root && "needs root (apt-get, qemu)", timeout: 300_000 }, () => {
  const run = spawnSync("bash", [SCRIPT], {
    env: { ...process.env, BRANCHGATE_BIN: BIN, VM_WORK: WORK },
    encoding: "utf8",
    timeout: 280_000,
  });
  const serial = (() => { try { return readFileSync(join(WORK, "serial.log"), "utf8"); } catch { return ""; } })();
  const context = `${run.stderr}\n--- serial (tail) ---\n${serial.slice(-4000)}`;
  let report;
  try { report = JSON.parse(readFileSync(join(WORK, "report.json"), "utf8")); } catch (e) { assert.fail(`no report: ${e}\n${context}`); }
  assert.deepEqual(report.errors, [], context);

  const camera = report.cameras.find((c) => !c.simulated);
  assert.ok(camera, "vivid is a real camera, not the simulated one");
  assert.match(camera.name, /vivid/);
  const v4l2 = camera.v4l2;
  assert.equal(v4l2.driver, "vivid");
  const fourccs = v4l2.formats.map((f) => f.fourcc);
  assert.ok(fourccs.includes("YUYV"), fourccs.join());
  assert.ok(v4l2.formats.every((f) => f.sizes.length > 0), "frame sizes for each format");
  const names = v4l2.controls.map((c) => c.name);
  assert.ok(names.includes("Brightness") && names.includes("Contrast"), names.join());
  assert.equal(typeof v4l2.controls.find((c) => c.name === "Brightness").value, "number");
  assert.equal(camera.frames.length, 3);
  const [, w, h] = v4l2.current;
  for (const f of camera.frames) {
    assert.equal(f.fourcc, v4l2.current[0]);
    assert.ok(f.width === w && f.height === h && f.bytes > 0 && f.nonzero, JSON.stringify(f));
  }
  assert.ok(camera.frames[2].sequence > camera.frames[0].sequence, "successive frames");
  // Captured AND encoded by our pipeline: raw YUYV from the driver, H.264 out of x264enc.
  const encode = camera.encode;
  assert.ok(encode, "an encode check ran");
  assert.equal(encode.input, "YUY2");
  assert.equal(encode.encoder, "x264enc");
  assert.deepEqual(encode.size, [640, 360]);
  assert.ok(encode.frames >= 20, `at least 5 encoded frames a second under TCG: ${JSON.stringify(encode)}`);
  assert.ok(encode.keyframes >= 1 && encode.bytes > 10_000, JSON.stringify(encode));
  // Reconfigured half-way (as a change of the cameras section does): the pipeline restarted at
  // the new size and the same viewer went on receiving, from a keyframe.
  assert.deepEqual(encode.restarted_size, [320, 180]);
  assert.ok(encode.frames_after_restart >= 5 && encode.keyframes_after_restart >= 1, JSON.stringify(encode));
  // A snapshot of the real camera, decoded from its encoded stream (what the snapshot API serves).
  assert.ok(camera.snapshot && camera.snapshot.bytes > 1000, `a JPEG snapshot: ${JSON.stringify(camera.snapshot)}`);
  assert.deepEqual(camera.snapshot.size, [640, 360], "at the configured size");

  assert.equal(report.audio.backend, "alsa");
  assert.equal(report.audio.simulated, false);
  const cards = new Set(report.audio.devices.map((d) => d.card));
  assert.ok(cards.has("Loopback") && cards.has("Dummy"), [...cards].join());
  const loop = report.audio.loopback;
  assert.ok(Math.abs(loop.detected_hz - 1000) < 5, `detected ${loop.detected_hz} Hz`);
  assert.ok(loop.level_dbfs > -12 && loop.level_dbfs < -6, `a half-scale sine is -9 dBFS, got ${loop.level_dbfs}`);
  assert.equal(report.audio.mixer.changed.volume_percent, 40);
  assert.equal(report.audio.mixer.restored.volume_percent, report.audio.mixer.before.volume_percent);

  assert.equal(report.watchdog.info.kind, "device");
  assert.equal(report.watchdog.info.identity, "i6300ESB timer");
  assert.equal(report.watchdog.info.timeout_seconds, 5);
  assert.equal(report.watchdog.pets, 4);
  assert.equal(report.watchdog.stopped, true, "the selftest disarms it with the magic close");

  // The daemon: its health loop kept the VM up three times the timeout, and the kill reset it.
  // (ANSI colours of the daemon's log lines removed)
  const lines = serial.replace(/\r/g, "").replace(/\x1b\[[0-9;]*m/g, "").split("\n");
  const at = (text) => lines.findIndex((l) => l.startsWith(text));
  assert.ok(at("BGVM: daemon ready") > 0, context);
  assert.ok(at("BGVM: daemon alive after 15 s") > at("BGVM: daemon ready"), context);
  assert.ok(lines.some((l) => l.startsWith("BGVM: daemon log:") && /kind=Device/.test(l) && /\/dev\/watchdog/.test(l)), context);
  const killed = at("BGVM: daemon killed");
  assert.ok(killed > 0, context);
  assert.ok(!lines.slice(0, at("BGVM: daemon start")).some((l) => /watchdog did not stop/.test(l)),
    "the selftest's magic close stopped the watchdog");
  assert.ok(lines.slice(at("BGVM: daemon start")).some((l) => /watchdog did not stop/.test(l)), "SIGKILL left it armed");
  assert.equal((serial.match(/BGVM: boot/g) || []).length, 2, "the watchdog reset the VM: a second boot");
  assert.equal(run.status, 0, context);
});
