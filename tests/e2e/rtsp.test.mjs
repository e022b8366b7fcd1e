// RTSP per the contract (rtsp://<box>:8554/{id}, here on the port the test gave it):
// ffprobe and ffmpeg (Debian's, real players we did not write) read the simulated
// camera's H.264 over RTP interleaved on TCP and over UDP; bad requests get RTSP errors.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import net from "node:net";
import { startBox, Api } from "./lib/box.mjs";

let box, api, camera;

before(async () => {
  box = await startBox({ provision: { admin: { password: "installer-secret-1" } } });
  api = new Api(box.url);
  await api.login("admin", "installer-secret-1");
  camera = (await api.get("/api/v1/cameras")).json.find((c) => c.simulated);
  assert.ok(camera, "a simulated camera");
});

after(async () => {
  await box?.stop();
});

function ffprobe(transport) {
  const url = `rtsp://127.0.0.1:${box.rtspPort}/${camera.id}`;
  const result = spawnSync("timeout", ["-s", "KILL", "40", "ffprobe", "-v", "error", "-rtsp_transport", transport,
    "-show_streams", "-select_streams", "v", "-of", "json", url], { encoding: "utf8" });
  assert.equal(result.status, 0, `ffprobe over ${transport}: ${result.stderr}`);
  return JSON.parse(result.stdout).streams[0];
}

/** Decodes `frames` frames with ffmpeg; the number it decoded. */
function decode(transport, frames) {
  const url = `rtsp://127.0.0.1:${box.rtspPort}/${camera.id}`;
  const result = spawnSync("timeout", ["-s", "KILL", "60", "ffmpeg", "-v", "error", "-stats_period", "100",
    "-rtsp_transport", transport, "-i", url, "-frames:v", String(frames), "-f", "null", "-", "-progress", "pipe:1"],
    { encoding: "utf8" });
  assert.equal(result.status, 0, `ffmpeg over ${transport}: ${result.stderr}`);
  const counts = [...result.stdout.matchAll(/^frame=(\d+)$/gm)].map((m) => Number(m[1]));
  return counts.pop() ?? 0;
}

for (const transport of ["tcp", "udp"]) {
  test(`ffprobe sees the camera's H.264 over RTSP (${transport}), ffmpeg decodes its frames`, () => {
    const stream = ffprobe(transport);
    assert.equal(stream.codec_name, "h264");
    assert.equal(stream.width, camera.width);
    assert.equal(stream.height, camera.height);
    assert.ok(decode(transport, 30) >= 30, "30 frames decoded");
  });
}

/** One raw RTSP exchange: the status line of the answer. */
function exchange(text) {
  return new Promise((resolve, reject) => {
    const socket = net.connect(box.rtspPort, "127.0.0.1", () => socket.write(text));
    let answer = "";
    socket.on("data", (d) => {
      answer += d;
      if (answer.includes("\r\n\r\n")) { socket.destroy(); resolve(answer); }
    });
    socket.on("error", reject);
    setTimeout(() => { socket.destroy(); reject(new Error(`no answer to ${JSON.stringify(text)}`)); }, 5000);
  });
}

test("RTSP errors a player can read: unknown camera 404, no CSeq 400, garbage 400, RECORD 405", async () => {
  const base = `rtsp://127.0.0.1:${box.rtspPort}`;
  assert.match(await exchange(`DESCRIBE ${base}/no-such-camera RTSP/1.0\r\nCSeq: 1\r\n\r\n`), /^RTSP\/1.0 404 Not Found\r\nCSeq: 1\r\n/);
  assert.match(await exchange(`DESCRIBE ${base}/${camera.id} RTSP/1.0\r\n\r\n`), /^RTSP\/1.0 400 /);
  assert.match(await exchange("GET / HTTP/1.1\r\nHost: x\r\n\r\n"), /^RTSP\/1.0 400 Bad Request\r\n/);
  assert.match(await exchange(`RECORD ${base}/${camera.id} RTSP/1.0\r\nCSeq: 9\r\n\r\n`), /^RTSP\/1.0 405 /);
  const options = await exchange(`OPTIONS ${base}/${camera.id} RTSP/1.0\r\nCSeq: 2\r\n\r\n`);
  assert.match(options, /Public: OPTIONS, DESCRIBE, SETUP, PLAY/);
});
