// The box's TURN server against coturn's own client tools (Debian `coturn`),
// on loopback only. Loopback peers are opened with turn.allowed_peers, as an
// operator would for a lab; by default they are refused (checked too).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { promisify } from "node:util";
import { startBox, freePort, Api, BIN, LAB_TURN } from "./lib/box.mjs";

const run = promisify(execFile);
let peerPort;
let peer;

before(async () => {
  peerPort = await freePort();
  peer = spawn("turnutils_peer", ["-L", "127.0.0.1", "-p", String(peerPort)], { stdio: "ignore" });
  await new Promise((r) => setTimeout(r, 300));
});
after(() => peer?.kill());

async function turnBox(turn = {}) {
  const box = await startBox({ provision: { admin: { password: "installer-secret-1" }, turn: { ...LAB_TURN, ...turn } } });
  // The TURN service starts beside the admin UI: wait until it answers a Binding.
  for (let i = 0; i < 50; i++) {
    const out = await run("turnutils_stunclient", ["-p", String(box.turnPort), "127.0.0.1"], { timeout: 5000 }).then((r) => r.stdout + r.stderr, () => "");
    if (out.includes("reflexive addr")) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  return box;
}

/** Runs turnutils_uclient against `server`; returns {sent, received, lost, output}. */
async function uclient(box, args, port = box.turnPort, timeout = 60000, server = "127.0.0.1") {
  const { stdout, stderr } = await run("turnutils_uclient", [...args, "-p", String(port), server], { timeout })
    .catch((e) => ({ stdout: e.stdout || "", stderr: e.stderr || "" }));
  const output = stdout + stderr;
  const totals = [...output.matchAll(/tot_send_msgs=(\d+), tot_recv_msgs=(\d+)/g)].pop();
  const lost = output.match(/Total lost packets (\d+)/);
  return { sent: Number(totals?.[1] ?? 0), received: Number(totals?.[2] ?? 0), lost: lost ? Number(lost[1]) : null, output };
}

test("turnutils_stunclient gets its reflexive address", async () => {
  const box = await turnBox();
  try {
    const { stdout, stderr } = await run("turnutils_stunclient", ["-p", String(box.turnPort), "127.0.0.1"]);
    assert.match(stdout + stderr, /UDP reflexive addr: 127\.0\.0\.1:\d+/);
  } finally { await box.stop(); }
});

test("turnutils_uclient relays over UDP with channels, with Send/Data, and client to client, losing nothing", async () => {
  const box = await turnBox();
  try {
    const base = ["-u", "test", "-w", "secret", "-n", "200", "-m", "4", "-l", "120", "-z", "5"];
    for (const [name, extra] of [["channels", ["-e", "127.0.0.1", "-r", String(peerPort)]],
      ["send/data indications", ["-s", "-e", "127.0.0.1", "-r", String(peerPort)]],
      ["client to client", ["-y"]]]) {
      const r = await uclient(box, [...base, ...extra]);
      assert.equal(r.lost, 0, `${name}: ${r.output.slice(-600)}`);
      assert.ok(r.sent >= 800 && r.received === r.sent, `${name}: sent ${r.sent}, received ${r.received}`);
    }
    // The admin UI's view: metrics count what was relayed.
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    await new Promise((r) => setTimeout(r, 1200)); // the monitor refreshes every second
    const metrics = (await api.get("/metrics")).text;
    const toPeer = Number(metrics.match(/branchgate_turn_relayed_packets_total\{direction="to_peer"\} (\d+)/)?.[1]);
    assert.ok(toPeer >= 2400, `to_peer ${toPeer}`);
    const listing = (await api.get("/api/v1/turn/allocations")).json;
    assert.equal(listing.running, true);
    assert.ok(Array.isArray(listing.allocations));
    assert.equal((await api.get("/turn")).status, 200);
  } finally { await box.stop(); }
});

test("IPv6 relays (turnutils_uclient -x) and dual allocations (-Z) to IPv4 and IPv6 peers, losing nothing", async () => {
  const peer6Port = await freePort();
  const peer6 = spawn("turnutils_peer", ["-L", "::1", "-p", String(peer6Port)], { stdio: "ignore" });
  const box = await turnBox({ relay_ipv6: "::1", allowed_peers: ["127.0.0.1/32", "::1/128"] });
  try {
    await new Promise((r) => setTimeout(r, 300));
    const base = ["-u", "test", "-w", "secret", "-n", "100", "-m", "2", "-l", "120", "-z", "5"];
    for (const [name, extra] of [
      ["IPv6 relay, channels", ["-x", "-e", "::1", "-r", String(peer6Port)]],
      ["IPv6 relay, send/data", ["-x", "-s", "-e", "::1", "-r", String(peer6Port)]],
      ["dual allocation, IPv6 peer", ["-Z", "-e", "::1", "-r", String(peer6Port)]],
      ["dual allocation, IPv4 peer", ["-Z", "-e", "127.0.0.1", "-r", String(peerPort)]],
    ]) {
      const r = await uclient(box, [...base, ...extra]);
      assert.equal(r.lost, 0, `${name}: ${r.output.slice(-600)}`);
      assert.ok(r.sent >= 200 && r.received === r.sent, `${name}: sent ${r.sent}, received ${r.received}: ${r.output.slice(-400)}`);
    }
    // Without an IPv6 relay configured, asking for one is refused with 440.
    const v4only = await turnBox();
    try {
      const r = await uclient(v4only, [...base, "-x", "-e", "::1", "-r", String(peer6Port)], v4only.turnPort, 15000);
      assert.equal(r.received, 0);
      assert.match(r.output, /440|[Aa]ddress [Ff]amily/, r.output.slice(-600));
    } finally { await v4only.stop(); }
  } finally {
    peer6.kill();
    await box.stop();
  }
});

test("IPv6 clients: listeners on 127.0.0.1 and ::1 (turn.listen_ips), turnutils_stunclient and turnutils_uclient over ::1, losing nothing", async () => {
  const box = await turnBox({ listen_ips: ["127.0.0.1", "::1"] });
  try {
    const { stdout, stderr } = await run("turnutils_stunclient", ["-p", String(box.turnPort), "::1"]);
    assert.match(stdout + stderr, /UDP reflexive addr: \[?::1\]?/, "an IPv6 reflexive address");
    // No address family asked for: an IPv4 relay (RFC 8656), reached over the IPv6 listener.
    const base = ["-u", "test", "-w", "secret", "-e", "127.0.0.1", "-r", String(peerPort), "-n", "100", "-m", "2", "-l", "120", "-z", "5"];
    for (const [name, extra] of [["UDP", []], ["TCP", ["-t"]]]) {
      const r = await uclient(box, [...extra, ...base], box.turnPort, 60000, "::1");
      assert.equal(r.lost, 0, `${name}: ${r.output.slice(-600)}`);
      assert.ok(r.sent >= 200 && r.received === r.sent, `${name}: sent ${r.sent}, received ${r.received}: ${r.output.slice(-400)}`);
    }
  } finally { await box.stop(); }
});

test("turnutils_uclient over TCP and over TLS (the box's certificate), losing nothing", async () => {
  const box = await turnBox();
  try {
    const base = ["-u", "test", "-w", "secret", "-e", "127.0.0.1", "-r", String(peerPort), "-n", "100", "-m", "4", "-l", "120", "-z", "5"];
    const tcp = await uclient(box, ["-t", ...base]);
    assert.equal(tcp.lost, 0, tcp.output.slice(-600));
    assert.ok(tcp.sent >= 400 && tcp.received === tcp.sent, `tcp: sent ${tcp.sent}, received ${tcp.received}`);
    // -S with -t is TLS (-S alone would be DTLS over UDP).
    const tls = await uclient(box, ["-t", "-S", ...base], box.turnTlsPort);
    assert.equal(tls.lost, 0, tls.output.slice(-600));
    assert.ok(tls.sent >= 400 && tls.received === tls.sent, `tls: sent ${tls.sent}, received ${tls.received}`);
  } finally { await box.stop(); }
});

test("turnutils_uclient -T: RFC 6062 TCP relays (Connect and ConnectionAttempt between clients), losing nothing", async () => {
  const box = await turnBox();
  try {
    // -T implies TCP to the server, client-to-client and no channels; half of the data
    // connections come from Connect, half from peers connecting to a relay (ConnectionAttempt).
    const r = await uclient(box, ["-T", "-u", "test", "-w", "secret", "-n", "100", "-m", "4", "-l", "120", "-z", "5"]);
    assert.equal(r.lost, 0, r.output.slice(-800));
    assert.ok(r.sent >= 400 && r.received === r.sent, `sent ${r.sent}, received ${r.received}: ${r.output.slice(-400)}`);
  } finally { await box.stop(); }
});

test("REST credentials (coturn use-auth-secret) work; wrong passwords do not", async () => {
  const box = await turnBox({ auth_secret: "rest-api-secret" });
  try {
    const rest = await uclient(box, ["-W", "rest-api-secret", "-u", "app", "-e", "127.0.0.1", "-r", String(peerPort), "-n", "50", "-m", "1", "-l", "120", "-z", "5"]);
    assert.equal(rest.lost, 0, rest.output.slice(-600));
    assert.ok(rest.received >= 50);
    // The CLI hands out the same kind of credential (for an app server), read next to the running daemon.
    const { stdout } = await run(BIN, ["turn", "credential", "--data-dir", box.dataDir, "--user", "app", "--ttl", "600"]);
    const credential = JSON.parse(stdout);
    assert.match(credential.username, /^\d+:app$/);
    const cli = await uclient(box, ["-u", credential.username, "-w", credential.credential, "-e", "127.0.0.1", "-r", String(peerPort), "-n", "50", "-m", "1", "-l", "120", "-z", "5"]);
    assert.equal(cli.lost, 0, cli.output.slice(-600));
    assert.ok(cli.received >= 50);
    // Changing users from the CLI while the daemon runs is refused with a pointer to the UI/API.
    const refused = await run(BIN, ["turn", "user", "add", "--data-dir", box.dataDir, "bob", "--password", "bob-secret-1"]).then(() => null, (e) => e.stderr);
    assert.match(refused, /web UI|PUT \/api\/v1\/config\/turn/);
    // A wrong password: refused (uclient keeps retrying, then the box stops answering that
    // address for a while, so the run is cut short and judged by the box's counters).
    const wrong = await uclient(box, ["-u", "test", "-w", "wrong", "-e", "127.0.0.1", "-r", String(peerPort), "-n", "10", "-m", "1", "-l", "120"], box.turnPort, 8000);
    assert.equal(wrong.received, 0);
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    await new Promise((r) => setTimeout(r, 1200));
    const failures = Number((await api.get("/metrics")).text.match(/branchgate_turn_auth_failures_total (\d+)/)?.[1]);
    assert.ok(failures >= 1, `auth failures ${failures}`);
  } finally { await box.stop(); }
});

test("loopback peers are refused unless the operator allows them", async () => {
  const box = await turnBox({ allowed_peers: [] });
  try {
    const r = await uclient(box, ["-u", "test", "-w", "secret", "-e", "127.0.0.1", "-r", String(peerPort), "-n", "10", "-m", "1", "-l", "120"]);
    assert.equal(r.received, 0, r.output.slice(-600));
    assert.match(r.output, /403/);
  } finally { await box.stop(); }
});

/** Runs `script` in a fresh network namespace that has nothing but loopback. */
async function inNamespace(script, args) {
  const ns = `bgturn${process.pid}`;
  await run("ip", ["netns", "add", ns]);
  try {
    await run("ip", ["netns", "exec", ns, "ip", "link", "set", "lo", "up"]);
    return await run("ip", ["netns", "exec", ns, process.execPath, script, ...args], { timeout: 120000, env: process.env })
      .then((r) => ({ code: 0, ...r }), (e) => ({ code: e.code ?? 1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" }));
  } finally {
    await run("ip", ["netns", "del", ns]);
  }
}

for (const transport of ["udp", "tcp"]) {
  test(`two Chromium peers restricted to relay candidates call each other through the box's TURN (${transport})`, async () => {
    const script = new URL("./lib/relay-call.mjs", import.meta.url).pathname;
    const r = await inNamespace(script, [transport]);
    const line = r.stdout.trim().split("\n").pop() || "{}";
    const result = JSON.parse(line.startsWith("{") ? line : "{}");
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr.slice(-2000)}`);
    assert.equal(result.connected, true);
    assert.equal(result.second.localType, "relay");
    assert.equal(result.second.relayProtocol, transport);
    assert.ok(result.second.packets > result.first.packets, "audio keeps arriving");
  });
}
