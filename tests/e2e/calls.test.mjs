// Calls through the box's B2BUA against real peers: sipp (Debian sip-tester)
// as caller and callee on loopback. The caller registers-style authenticates
// with digest (407), the callee sits behind a trunk or is a registered user.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startBox, freePort, Api } from "./lib/box.mjs";
import { sipp, SCENARIOS } from "./lib/sipp.mjs";


const CALLER = { user: "1001", password: "pw-1001-secret" };
const CALLEE = { user: "2001", password: "pw-2001-secret" };

/** A scenario with only the wanted variant sections (<!--begin:x--> ... <!--end:x-->). */
function variant(dir, file, keep) {
  let text = readFileSync(SCENARIOS + file, "utf8");
  for (const name of ["hold", "caller_bye", "callee_bye"]) {
    if (!keep.includes(name)) text = text.replace(new RegExp(`<!--begin:${name}-->[\\s\\S]*?<!--end:${name}-->`), "");
  }
  const path = join(dir, `${keep.join("-") || "plain"}-${file}`);
  writeFileSync(path, text);
  return path;
}

async function uas(box, file, port, keep = []) {
  return sipp(box, `uas-${port}`, ["-sf", variant(box.dataDir, file, keep), "-p", String(port), "-mp", String(await freePort()), "-rtp_echo"]);
}

async function uac(box, file, number, keep = []) {
  return sipp(box, "uac", [`127.0.0.1:${box.sipPort}`, "-sf", variant(box.dataDir, file, keep), "-p", String(await freePort()),
    "-mp", String(await freePort()), "-au", CALLER.user, "-ap", CALLER.password,
    "-key", "domain", "branch.example", "-key", "user", CALLER.user, "-key", "number", number]);
}

function provision(trunks, routes, media = {}) {
  const base = 20000 + 100 * Math.floor(Math.random() * 99);
  return {
    admin: { password: "installer-secret-1" },
    sip: { domain: "branch.example", users: [CALLER, CALLEE].map((u) => ({ username: u.user, password: u.password })), trunks, routes },
    media: { rtp_port_min: base, rtp_port_max: base + 99, ...media },
  };
}

async function boxWithTrunk() {
  const trunkPort = await freePort();
  const box = await startBox({ provision: provision(
    [{ name: "pstn", host: "127.0.0.1", port: trunkPort, transport: "udp", priority: 10, keepalive_seconds: 0 }],
    [{ prefix: "9", strip: 1, trunk: "pstn" }]) });
  const api = new Api(box.url);
  await api.login("admin", "installer-secret-1");
  return { box, api, trunkPort };
}

/** Polls the live calls table until `predicate` holds for a call (or gives up after `ms`). */
async function waitForCall(api, predicate, ms = 10000) {
  for (const until = Date.now() + ms; Date.now() < until;) {
    const calls = (await api.get("/api/v1/sip/calls")).json.calls;
    const found = calls.find(predicate);
    if (found) return found;
    await new Promise((r) => setTimeout(r, 150));
  }
  return null;
}

test("a user calls out through a trunk: digest, topology hiding, media anchored both ways, hold/resume, caller hangs up, CDR", async () => {
  const { box, api, trunkPort } = await boxWithTrunk();
  try {
    const callee = uas(box, "uas.xml", trunkPort, ["hold", "caller_bye"]);
    await new Promise((r) => setTimeout(r, 300));
    const caller = uac(box, "call_uac.xml", "95551234", ["hold", "caller_bye"]);
    const live = await waitForCall(api, (c) => c.state === "answered" && c.packets_a_to_b > 20 && c.packets_b_to_a > 20);
    assert.ok(live, "an answered call whose media the box relays both ways (sipp plays G.711, the callee echoes)");
    assert.equal(live.caller, "1001");
    assert.equal(live.callee, "95551234");
    assert.equal(live.destination, "pstn");
    // Call details: sipp plays PCMA (its g711a.pcap) and the callee echoes it, over plain RTP.
    for (const media of [live.caller_media, live.callee_media]) {
      assert.equal(media?.codec, "PCMA", JSON.stringify(live));
      assert.equal(media.webrtc, false);
      assert.equal(media.transcoded, false);
      assert.ok(media.packets > 0 && media.mos >= 1 && media.mos <= 4.5, JSON.stringify(media));
    }
    const page = await api.get("/calls");
    assert.equal(page.status, 200);
    assert.match(page.text, /<td>1001<\/td><td>95551234<\/td><td>pstn<\/td><td>answered<\/td>/);
    assert.match(page.text, /PCMA · \d+ pkts · loss [\d.]+% · jitter [\d.]+ ms · MOS [\d.]+/);
    assert.equal(await callee, 0, "callee scenario (no caller identifiers leaked, Subject passed, hold/resume seen)");
    assert.equal(await caller, 0, "caller scenario (answer SDP on the box's relay, hold/resume answered)");
    assert.deepEqual((await api.get("/api/v1/sip/calls")).json.calls, [], "no call left");
    const cdr = await api.get("/api/v1/sip/cdr.csv");
    assert.equal(cdr.status, 200);
    assert.match(cdr.headers["content-type"], /^text\/csv/);
    const lines = cdr.text.trim().split("\r\n");
    assert.equal(lines.length, 2, cdr.text);
    assert.match(lines[1], /"1001","95551234","pstn","200","caller-bye"$/);
  } finally { await box.stop(); }
});

test("the callee hangs up", async () => {
  const { box, api, trunkPort } = await boxWithTrunk();
  try {
    const callee = uas(box, "uas.xml", trunkPort, ["callee_bye"]);
    await new Promise((r) => setTimeout(r, 300));
    const caller = uac(box, "call_uac.xml", "95550000", ["callee_bye"]);
    assert.equal(await callee, 0, "callee sent BYE and got 200");
    assert.equal(await caller, 0, "caller got the BYE through the box");
    const lines = (await api.get("/api/v1/sip/cdr.csv")).text.trim().split("\r\n");
    assert.match(lines[1], /"callee-bye"$/);
  } finally { await box.stop(); }
});

test("a callee with reliable early media (100rel): the box PRACKs the 183 itself, the caller gets it unreliably", async () => {
  const { box, trunkPort } = await boxWithTrunk();
  try {
    const callee = uas(box, "uas_100rel.xml", trunkPort);
    await new Promise((r) => setTimeout(r, 300));
    const caller = uac(box, "call_uac.xml", "95550000", ["caller_bye"]);
    assert.equal(await callee, 0, "INVITE offered 100rel, the 183 was PRACKed with the INVITE's CSeq, the ACK too");
    assert.equal(await caller, 0, "the caller (no 100rel) got the 183 and the 200");
  } finally { await box.stop(); }
});

test("a caller that requires 100rel: the box sends its 183 reliably, takes the PRACK, and sends the 200 after it", async () => {
  const { box, trunkPort } = await boxWithTrunk();
  try {
    const callee = uas(box, "uas_100rel.xml", trunkPort);
    await new Promise((r) => setTimeout(r, 300));
    const caller = uac(box, "uac_100rel.xml", "95550003");
    assert.equal(await caller, 0, "183 with Require: 100rel and RSeq, PRACK answered 200, then the INVITE's 200");
    assert.equal(await callee, 0, "the callee's own reliable 183 PRACKed by the box");
  } finally { await box.stop(); }
});

test("the installer hangs up a live call from the API: both sides get a BYE", async () => {
  const { box, api, trunkPort } = await boxWithTrunk();
  try {
    // Both scenarios wait for a BYE (the callee's caller_bye part, the caller's callee_bye part).
    const callee = uas(box, "uas.xml", trunkPort, ["caller_bye"]);
    await new Promise((r) => setTimeout(r, 300));
    const caller = uac(box, "call_uac.xml", "95550002", ["callee_bye"]);
    const live = await waitForCall(api, (c) => c.state === "answered");
    assert.ok(live, "answered");
    // The caller's scenario plays media for 2.5 s before it waits for the BYE.
    await new Promise((r) => setTimeout(r, 3000));
    assert.equal((await api.request("DELETE", `/api/v1/sip/calls/${live.id}`)).status, 204);
    assert.equal(await callee, 0, "callee got a BYE");
    assert.equal(await caller, 0, "caller got a BYE");
    await new Promise((r) => setTimeout(r, 1200)); // the calls table refreshes every second
    assert.equal((await api.request("DELETE", `/api/v1/sip/calls/${live.id}`)).status, 404, "gone");
    const lines = (await api.get("/api/v1/sip/cdr.csv")).text.trim().split("\r\n");
    assert.match(lines[1], /"admin-hangup"$/);
  } finally { await box.stop(); }
});

test("the caller cancels while it rings: CANCEL reaches the callee, 487 the caller", async () => {
  const { box, api, trunkPort } = await boxWithTrunk();
  try {
    const callee = uas(box, "cancel_uas.xml", trunkPort);
    await new Promise((r) => setTimeout(r, 300));
    const caller = uac(box, "cancel_uac.xml", "95550001");
    assert.equal(await callee, 0, "callee got the CANCEL and the ACK of its 487");
    assert.equal(await caller, 0, "caller got 200 for CANCEL and 487 for the INVITE");
    const lines = (await api.get("/api/v1/sip/cdr.csv")).text.trim().split("\r\n");
    assert.match(lines[1], /"487","cancelled"$/);
  } finally { await box.stop(); }
});

test("a call to a registered user reaches the phone at its registered contact", async () => {
  const box = await startBox({ provision: provision([], []) });
  try {
    const phonePort = await freePort();
    const registered = await sipp(box, "register", [`127.0.0.1:${box.sipPort}`, "-sf", SCENARIOS + "register_contact.xml",
      "-p", String(await freePort()), "-au", CALLEE.user, "-ap", CALLEE.password, "-key", "domain", "branch.example",
      "-key", "user", CALLEE.user, "-key", "contact_port", String(phonePort)]);
    assert.equal(registered, 0, "2001 registered its phone's contact");
    const callee = uas(box, "uas.xml", phonePort, ["caller_bye"]);
    await new Promise((r) => setTimeout(r, 300));
    const caller = uac(box, "call_uac.xml", CALLEE.user, ["caller_bye"]);
    assert.equal(await callee, 0);
    assert.equal(await caller, 0);
  } finally { await box.stop(); }
});

test("a dead first trunk: the call fails over to the next one, and OPTIONS keepalives mark it down", async () => {
  const deadPort = await freePort();
  const livePort = await freePort();
  const box = await startBox({ provision: provision([
    { name: "dead", host: "127.0.0.1", port: deadPort, transport: "udp", priority: 1, keepalive_seconds: 2 },
    { name: "live", host: "127.0.0.1", port: livePort, transport: "udp", priority: 2, keepalive_seconds: 0 },
  ], [{ prefix: "9", strip: 1, trunk: "dead" }, { prefix: "9", strip: 1, trunk: "live" }]) });
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    const callee = uas(box, "uas.xml", livePort, ["caller_bye"]);
    await new Promise((r) => setTimeout(r, 300));
    const started = Date.now();
    const caller = uac(box, "call_uac.xml", "90123", ["caller_bye"]);
    assert.equal(await callee, 0, "the live trunk got the call");
    assert.equal(await caller, 0);
    assert.ok(Date.now() - started < 20000);
    let trunks = [];
    for (let i = 0; i < 40; i++) {
      trunks = (await api.get("/api/v1/sip/calls")).json.trunks;
      if (trunks.find((t) => t.name === "dead")?.up === false) break;
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.deepEqual(trunks.map((t) => [t.name, t.up]), [["dead", false], ["live", true]]);
    const metrics = await api.get("/metrics");
    assert.match(metrics.text, /branchgate_sip_trunk_up\{trunk="dead"\} 0/);
    assert.match(metrics.text, /branchgate_sip_calls_total\{cause="caller-bye"\} 1/);
    assert.match(metrics.text, /branchgate_sip_calls_started_total 1/);
    const lines = (await api.get("/api/v1/sip/cdr.csv")).text.trim().split("\r\n");
    assert.match(lines[1], /"live","200","caller-bye"$/);
  } finally { await box.stop(); }
});

test("a trunk that wants digest: the box answers its 407 with the trunk's credentials", async () => {
  const trunkPort = await freePort();
  const box = await startBox({ provision: provision(
    [{ name: "pstn", host: "127.0.0.1", port: trunkPort, transport: "udp", priority: 10, keepalive_seconds: 0,
       username: "trunkuser", password: "trunk-secret" }],
    [{ prefix: "9", strip: 1, trunk: "pstn" }]) });
  try {
    const callee = sipp(box, `uas-${trunkPort}`, ["-sf", SCENARIOS + "uas_auth.xml", "-p", String(trunkPort), "-mp", String(await freePort()), "-rtp_echo"]);
    await new Promise((r) => setTimeout(r, 300));
    const caller = uac(box, "call_uac.xml", "95550003", ["caller_bye"]);
    assert.equal(await callee, 0, "the trunk verified the box's credentials");
    assert.equal(await caller, 0);
  } finally { await box.stop(); }
});

test("the box registers at a trunk with digest and shows it registered", async () => {
  const trunkPort = await freePort();
  // The registrar listens before the box starts: the box registers at once.
  const registrarBox = { dataDir: (await import("node:fs")).mkdtempSync("/tmp/branchgate-registrar-") };
  const registrar = sipp(registrarBox, "registrar", ["-sf", SCENARIOS + "registrar_uas.xml", "-p", String(trunkPort)]);
  await new Promise((r) => setTimeout(r, 300));
  const box = await startBox({ provision: provision(
    [{ name: "carrier", host: "127.0.0.1", port: trunkPort, transport: "udp", keepalive_seconds: 0,
       register: true, username: "trunkuser", password: "trunk-secret" }], []) });
  try {
    assert.equal(await registrar, 0, "the registrar verified the credentials and granted 120 s");
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    let trunk;
    for (let i = 0; i < 20; i++) {
      trunk = (await api.get("/api/v1/sip/calls")).json.trunks[0];
      if (trunk.registered) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(trunk.registered, true);
    assert.match((await api.get("/calls")).text, /<td>registered<\/td>/);
  } finally { await box.stop(); }
});

test("a TCP trunk: the box connects to it and the call goes over that connection", async () => {
  const trunkPort = await freePort();
  const box = await startBox({ provision: provision(
    [{ name: "tcp-carrier", host: "127.0.0.1", port: trunkPort, transport: "tcp", keepalive_seconds: 0 }],
    [{ prefix: "9", strip: 1, trunk: "tcp-carrier" }]) });
  try {
    const callee = sipp(box, `uas-${trunkPort}`, ["-sf", variant(box.dataDir, "uas.xml", ["caller_bye"]), "-t", "t1",
      "-p", String(trunkPort), "-mp", String(await freePort()), "-rtp_echo"]);
    await new Promise((r) => setTimeout(r, 300));
    const caller = uac(box, "call_uac.xml", "95550004", ["caller_bye"]);
    assert.equal(await callee, 0, "the TCP trunk got the call, ACK and BYE over its connection");
    assert.equal(await caller, 0);
  } finally { await box.stop(); }
});

test("a call whose media stops is hung up after media.timeout_seconds (BYE to both sides)", async () => {
  const trunkPort = await freePort();
  const box = await startBox({ provision: provision(
    [{ name: "pstn", host: "127.0.0.1", port: trunkPort, transport: "udp", keepalive_seconds: 0 }],
    [{ prefix: "9", strip: 1, trunk: "pstn" }], { timeout_seconds: 5 }) });
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    // The caller plays ~4.7 s of G.711 and then goes quiet; both sides wait for a BYE.
    const callee = uas(box, "uas.xml", trunkPort, ["caller_bye"]);
    await new Promise((r) => setTimeout(r, 300));
    const started = Date.now();
    const caller = uac(box, "call_uac.xml", "95550005", ["callee_bye"]);
    assert.equal(await callee, 0, "callee got the box's BYE");
    assert.equal(await caller, 0, "caller got the box's BYE");
    assert.ok(Date.now() - started < 30000);
    const lines = (await api.get("/api/v1/sip/cdr.csv")).text.trim().split("\r\n");
    assert.match(lines[1], /"media-timeout"$/);
  } finally { await box.stop(); }
});
