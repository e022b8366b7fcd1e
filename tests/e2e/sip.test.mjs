// The box's SIP registrar against a real peer: sipp (Debian sip-tester) on loopback.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { startBox, freePort, Api } from "./lib/box.mjs";

const run = promisify(execFile);
const SCENARIOS = new URL("../sipp/", import.meta.url).pathname;

async function sipp(box, scenario, keys, transport = "u1") {
  const args = [`127.0.0.1:${box.sipPort}`, "-sf", SCENARIOS + scenario, "-t", transport, "-m", "1", "-l", "1", "-i", "127.0.0.1",
    "-p", String(await freePort()), "-timeout", "15s", "-timeout_error", "-nostdin", "-trace_err", "-error_file", `${box.dataDir}/sipp-errors.log`];
  for (const [k, v] of Object.entries(keys)) {
    if (k === "password") args.push("-au", keys.user, "-ap", v);
    else args.push("-key", k, v);
  }
  return run("sipp", args, { timeout: 30000, cwd: box.dataDir }).then(() => 0, (e) => e.code ?? 1);
}

const PROVISION = {
  admin: { password: "installer-secret-1" },
  sip: { domain: "branch.example", users: [{ username: "1001", password: "pw-1001-secret" }] },
};

test("sipp registers with digest, shows up as registered, and unregisters", async () => {
  const box = await startBox({ provision: PROVISION });
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    // The scenario registers, pauses 3 s, then unregisters.
    const running = sipp(box, "register.xml", { domain: "branch.example", user: "1001", password: "pw-1001-secret" });
    let registered = [];
    for (let i = 0; i < 25 && registered.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      registered = (await api.get("/api/v1/sip/registrations")).json.registrations;
    }
    assert.equal(registered.length, 1, "registered during the pause");
    assert.equal(registered[0].user, "1001");
    assert.match(registered[0].contact, /^sip:1001@127\.0\.0\.1:\d+$/);
    assert.equal(registered[0].transport, "UDP");
    assert.ok(registered[0].expires_in > 200 && registered[0].expires_in <= 300);
    assert.equal(await running, 0, "sipp REGISTER scenario passed");
    await new Promise((r) => setTimeout(r, 1200));
    assert.deepEqual((await api.get("/api/v1/sip/registrations")).json.registrations, [], "unregistered at the end");
  } finally { await box.stop(); }
});

test("a wrong password is refused", async () => {
  const box = await startBox({ provision: PROVISION });
  try {
    const code = await sipp(box, "register.xml", { domain: "branch.example", user: "1001", password: "wrong" });
    assert.notEqual(code, 0, "sipp must not get its 200");
  } finally { await box.stop(); }
});

test("sipp registers over TCP, and the registration records the connection", async () => {
  const box = await startBox({ provision: PROVISION });
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    const running = sipp(box, "register.xml", { domain: "branch.example", user: "1001", password: "pw-1001-secret" }, "t1");
    let registered = [];
    for (let i = 0; i < 25 && registered.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      registered = (await api.get("/api/v1/sip/registrations")).json.registrations;
    }
    assert.equal(registered.length, 1);
    assert.equal(registered[0].transport, "TCP");
    assert.equal(await running, 0, "sipp REGISTER scenario over TCP passed");
  } finally { await box.stop(); }
});
