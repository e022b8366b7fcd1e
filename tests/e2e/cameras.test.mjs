// Cameras per the contract: GET /api/v1/cameras lists {id, name, simulated, ...}; on a
// machine without /dev/video* the simulated camera is there, and its snapshots move.
import { test } from "node:test";
import assert from "node:assert/strict";
import { startBox, Api } from "./lib/box.mjs";

test("the simulated camera is listed and gives moving JPEG snapshots", async () => {
  const box = await startBox({ provision: { admin: { password: "installer-secret-1" } } });
  try {
    const api = new Api(box.url);
    assert.equal((await api.get("/api/v1/cameras")).status, 401, "login first");
    await api.login("admin", "installer-secret-1");
    const cameras = (await api.get("/api/v1/cameras")).json;
    assert.ok(Array.isArray(cameras) && cameras.length >= 1);
    const camera = cameras.find((c) => c.simulated) ?? cameras[0];
    for (const key of ["id", "name", "simulated"]) assert.ok(key in camera, key);
    if (!camera.simulated) return; // a machine with a real camera: capture comes with GStreamer
    const first = await api.get(`/api/v1/cameras/${camera.id}/snapshot.jpg`);
    assert.equal(first.status, 200);
    assert.equal(first.headers["content-type"], "image/jpeg");
    assert.deepEqual([...first.bytes.subarray(0, 3)], [0xff, 0xd8, 0xff], "JPEG start of image");
    await new Promise((r) => setTimeout(r, 1100));
    const second = await api.get(`/api/v1/cameras/${camera.id}/snapshot.jpg`);
    assert.ok(!first.bytes.equals(second.bytes), "a moving picture, never a still image");
    assert.equal((await api.get("/api/v1/cameras/nope/snapshot.jpg")).status, 404);
  } finally { await box.stop(); }
});

test("the cameras section: per-device settings validated field by field, applied without stopping the simulated camera", async () => {
  const box = await startBox({ provision: { admin: { password: "installer-secret-1" } } });
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    assert.deepEqual((await api.get("/api/v1/config/cameras")).json.devices, []);
    const invalid = await api.put("/api/v1/config/cameras", {
      devices: [{ id: "video0", width: 641, fps: 500, bitrate_kbps: 1, encoder: "vp8enc" }, { id: "video0" }],
    });
    assert.equal(invalid.status, 422);
    const paths = invalid.json.fields.map((f) => f.path).sort();
    assert.deepEqual(paths, [
      "cameras.devices[0].bitrate_kbps", "cameras.devices[0].encoder", "cameras.devices[0].fps",
      "cameras.devices[0].width", "cameras.devices[1].id",
    ]);
    const good = { id: "video0", width: 640, height: 480, fps: 15, bitrate_kbps: 800, encoder: "x264enc" };
    const put = await api.put("/api/v1/config/cameras", { devices: [good] });
    assert.equal(put.status, 200, put.text);
    assert.deepEqual((await api.get("/api/v1/config/cameras")).json.devices, [good]);
    const snapshot = await api.get("/api/v1/cameras/sim0/snapshot.jpg");
    assert.equal(snapshot.status, 200, "the simulated camera still works");
  } finally { await box.stop(); }
});
