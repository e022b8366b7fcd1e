// Camera recording (`cameras.recording`): the simulated camera's stream — the one encode its
// viewers get — is written to segment files; ffprobe (Debian's ffmpeg) reads them; the API
// lists, downloads and deletes them; names that are not the recorder's are refused; turning
// recording off finishes the file being written.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBox, Api } from "./lib/box.mjs";

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** What ffprobe says of a file: its first video stream and the container's duration. */
function probe(file) {
  const out = execFileSync("ffprobe", ["-v", "error", "-show_streams", "-show_format", "-of", "json", file]);
  const info = JSON.parse(out.toString());
  return { video: info.streams.find((s) => s.codec_type === "video"), duration: Number(info.format.duration), format: info.format.format_name };
}

async function waitForFiles(api, count, ms) {
  for (const deadline = Date.now() + ms; Date.now() < deadline; await sleep(500)) {
    const list = (await api.get("/api/v1/recordings")).json.recordings;
    if (list.length >= count) return list;
  }
  throw new Error(`fewer than ${count} recordings after ${ms} ms`);
}

test("recording: 10-second MP4 segments of the simulated camera, listed, downloaded, probed, deleted; off finishes the last file", async () => {
  const box = await startBox({
    provision: { admin: { password: "installer-secret-1" }, cameras: { recording: { enabled: true, segment_seconds: 10 } } },
  });
  const work = mkdtempSync(join(tmpdir(), "branchgate-rec-"));
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    // The second file starts once the first is finished.
    const files = await waitForFiles(api, 2, 40000);
    const oldest = files[files.length - 1];
    assert.equal(oldest.camera, "sim0");
    assert.match(oldest.name, /^\d{8}T\d{6}Z\.mp4$/);
    const download = await api.get(oldest.url);
    assert.equal(download.status, 200);
    assert.equal(download.headers["content-type"], "video/mp4");
    assert.match(download.headers["content-disposition"], /attachment; filename="sim0-\d{8}T\d{6}Z\.mp4"/);
    const file = join(work, oldest.name);
    writeFileSync(file, download.bytes);
    const { video, duration, format } = probe(file);
    assert.match(format, /mp4/);
    assert.equal(video.codec_name, "h264");
    assert.deepEqual([video.width, video.height], [640, 360]);
    // A file starts at a keyframe (every 2 s) and stays within the segment length.
    assert.ok(duration > 6 && duration <= 10.5, `a segment of at most 10 s (ffprobe: ${duration} s)`);

    // Names the recorder does not give are refused, missing ones are 404.
    assert.equal((await api.get("/api/v1/recordings/sim0/..%2F..%2Fconfig.json")).status, 400);
    assert.equal((await api.get("/api/v1/recordings/sim0/notes.txt")).status, 400);
    assert.equal((await api.get("/api/v1/recordings/sim0/20000101T000000Z.mp4")).status, 404);
    const page = await api.get("/recordings");
    assert.equal(page.status, 200);
    assert.ok(page.text.includes(oldest.name), "the recordings page lists the file");

    // New retention limits apply to the running recorder: it is not restarted (no file is cut short).
    const starts = () => (box.stderr ?? "").split("\n").filter((l) => /recording: recording camera=sim0/.test(l)).length;
    assert.equal(starts(), 1);
    const retention = await api.put("/api/v1/config/cameras", { recording: { enabled: true, segment_seconds: 10, max_total_mb: 100 } });
    assert.equal(retention.status, 200, retention.text);
    await sleep(1000);
    assert.equal(starts(), 1, "the recorder kept running");

    // Settings are validated like every section.
    const invalid = await api.put("/api/v1/config/cameras", { recording: { enabled: true, segment_seconds: 5, format: "avi" } });
    assert.equal(invalid.status, 422);
    assert.deepEqual(invalid.json.fields.map((f) => f.path).sort(), ["cameras.recording.format", "cameras.recording.segment_seconds"]);

    assert.equal((await api.request("DELETE", oldest.url)).status, 204);
    const after = (await api.get("/api/v1/recordings")).json.recordings;
    assert.ok(!after.some((f) => f.name === oldest.name), "deleted");
    assert.equal((await api.request("DELETE", oldest.url)).status, 404);

    // Off: the file being written is finished (ffprobe reads it whole) and no new one starts.
    assert.equal((await api.put("/api/v1/config/cameras", { recording: { enabled: false } })).status, 200);
    await sleep(2000);
    const stopped = (await api.get("/api/v1/recordings")).json.recordings;
    await sleep(3000);
    assert.equal((await api.get("/api/v1/recordings")).json.recordings.length, stopped.length, "no new file once off");
    const last = await api.get(stopped[0].url);
    writeFileSync(join(work, "last.mp4"), last.bytes);
    const finished = probe(join(work, "last.mp4"));
    assert.equal(finished.video.codec_name, "h264");
    assert.ok(finished.duration > 0, `the last file plays (${finished.duration} s)`);
  } finally {
    await box.stop();
  }
});
