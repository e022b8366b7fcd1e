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
