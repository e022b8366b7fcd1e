// The external contract, driven over real HTTPS against the real daemon.
import { test } from "node:test";
import assert from "node:assert/strict";
import { statSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startBox, Api } from "./lib/box.mjs";

const CONTRACT = {
  admin: { password: "installer-secret-1" },
  sip: {
    domain: "branch.example",
    users: [{ username: "1001", password: "pw-1001" }],
    trunks: [{ name: "pstn", host: "127.0.0.1", port: 5090, transport: "udp", register: false, username: null, password: null, priority: 10 }],
    routes: [{ prefix: "9", strip: 1, trunk: "pstn" }],
  },
  turn: { realm: "branch.example", users: [{ username: "test", password: "secret" }], auth_secret: null, allowed_peers: ["127.0.0.1/32"] },
};

test("first start without provisioning writes a per-unit password file (0600) and forces a change", async () => {
  const box = await startBox();
  try {
    const mode = statSync(join(box.dataDir, "initial-admin-password")).mode & 0o777;
    assert.equal(mode, 0o600);
    assert.match(box.password, /^[A-Za-z0-9]{20}$/);
    assert.ok(box.stdout.includes(box.password), "the password is printed");
    const api = new Api(box.url);
    await api.login("admin", box.password);
    assert.equal((await api.get("/api/v1/config")).status, 200, "reading is allowed");
    const refused = await api.put("/api/v1/config/sip", { domain: "x.example" });
    assert.equal(refused.status, 403);
    assert.match(refused.json.error, /initial password/);
    const changed = await api.put("/api/v1/session/password", { current_password: box.password, new_password: "a-much-better-one" });
    assert.equal(changed.status, 200, changed.text);
    assert.equal((await api.put("/api/v1/config/sip", { domain: "x.example" })).status, 200);
  } finally { await box.stop(); }
});

test("provisioning applies the contract's configuration once, without a forced change", async () => {
  const box = await startBox({ provision: CONTRACT });
  try {
    assert.equal(box.password, null, "no initial password file when provisioning sets one");
    const api = new Api(box.url);
    const bad = await api.post("/api/v1/session", { username: "admin", password: "wrong" });
    assert.equal(bad.status, 401);
    const ok = await api.login("admin", "installer-secret-1");
    assert.equal(ok.json.must_change_password, false);
    const cookie = ok.headers["set-cookie"].find((c) => c.startsWith("__Host-branchgate="));
    for (const attr of ["Secure", "HttpOnly", "SameSite=Strict", "Path=/"]) assert.ok(cookie.includes(attr), `${attr} in ${cookie}`);

    const config = (await api.get("/api/v1/config")).json;
    assert.ok(config.revision >= 1);
    assert.equal(config.sip.routes[0].trunk, "pstn");
    assert.equal(config.sip.users[0].password, "********", "secrets never come back");
    assert.deepEqual(config.turn.allowed_peers, ["127.0.0.1/32"]);

    const sip = (await api.get("/api/v1/config/sip")).json;
    assert.equal(sip.domain, "branch.example");

    const invalid = await api.put("/api/v1/config/sip", { trunks: [{ name: "pstn", host: "not a host", port: 0 }] });
    assert.equal(invalid.status, 422);
    const paths = invalid.json.fields.map((f) => f.path);
    assert.ok(paths.includes("sip.trunks[0].host") && paths.includes("sip.trunks[0].port"), paths.join());

    const before = (await api.get("/api/v1/config")).json.revision;
    const put = await api.put("/api/v1/config/sip", { domain: "shop.example", users: [{ username: "1001", password: "new-pw-1001" }] });
    assert.equal(put.status, 200, put.text);
    assert.equal(put.json.revision, before + 1);
    const restored = await api.post(`/api/v1/config/revisions/${before}/restore`);
    assert.equal(restored.status, 200, restored.text);
    assert.equal((await api.get("/api/v1/config/sip")).json.domain, "branch.example");

    const foreign = await api.put("/api/v1/config/sip", { domain: "evil.example" }, { headers: { origin: "https://evil.example" } });
    assert.equal(foreign.status, 403);

    const status = await api.get("/api/v1/status");
    assert.equal(status.status, 200);
    assert.ok(Array.isArray(status.json.services));
    const openapi = await new Api(box.url).get("/api/v1/openapi.json");
    assert.equal(openapi.json.openapi, "3.1.0");
    assert.ok(openapi.json.paths["/api/v1/config/{section}"]);
    const metrics = await api.get("/metrics");
    assert.equal(metrics.status, 200);
    assert.match(metrics.text, /branchgate_config_revision \d+/);
    assert.equal((await new Api(box.url).get("/metrics")).status, 401);

    // Applied once: a restart with the same file keeps the changes made since.
    await api.put("/api/v1/config/system", { hostname: "kept" });
    await box.restart();
    const again = new Api(box.url);
    await again.login("admin", "installer-secret-1");
    assert.equal((await again.get("/api/v1/config/system")).json.hostname, "kept");
  } finally { await box.stop(); }
});

test("a damaged database starts from the last-known-good copy and the dashboard says so", async () => {
  const box = await startBox({ provision: { admin: { password: "installer-secret-1" } } });
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    assert.equal((await api.put("/api/v1/config/system", { hostname: "before-crash" })).status, 200);
    await box.kill();
    const sled = join(box.dataDir, "config.sled");
    for (const name of readdirSync(sled, { recursive: true })) {
      const path = join(sled, name);
      if (statSync(path).isFile()) writeFileSync(path, Buffer.alloc(4096, 0x5a));
    }
    await box.restart();
    const after = new Api(box.url);
    await after.login("admin", "installer-secret-1");
    const status = (await after.get("/api/v1/status")).json;
    assert.match(status.recovery_notice, /last-known-good/);
    assert.equal((await after.get("/api/v1/config/system")).json.hostname, "before-crash");
    const page = await after.get("/");
    assert.match(page.text, /last-known-good/);
  } finally { await box.stop(); }
});

/** The subject CN of the certificate the box presents on a new connection. */
async function presentedCommonName(port) {
  const tls = await import("node:tls");
  return new Promise((resolve, reject) => {
    const socket = tls.connect({ host: "127.0.0.1", port, rejectUnauthorized: false, servername: "localhost" }, () => {
      const cn = socket.getPeerCertificate().subject.CN;
      socket.end();
      resolve(cn);
    });
    socket.on("error", reject);
  });
}

test("an uploaded certificate is served at once, without a restart", async () => {
  const { execFileSync } = await import("node:child_process");
  const { mkdtempSync, readFileSync } = await import("node:fs");
  const { tmpdir } = await import("node:os");
  const dir = mkdtempSync(join(tmpdir(), "branchgate-cert-"));
  const make = (name) => {
    execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
      "-keyout", join(dir, `${name}.key`), "-out", join(dir, `${name}.crt`), "-subj", `/CN=${name}`, "-days", "2"], { stdio: "ignore" });
    return { certificate: readFileSync(join(dir, `${name}.crt`), "utf8"), private_key: readFileSync(join(dir, `${name}.key`), "utf8") };
  };
  const good = make("branch-test.example");
  const other = make("other.example");
  const box = await startBox({ provision: { admin: { password: "installer-secret-1" } } });
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    const pid = box.child.pid;
    assert.notEqual(await presentedCommonName(box.httpsPort), "branch-test.example");
    const mismatched = await api.put("/api/v1/tls", { certificate: good.certificate, private_key: other.private_key });
    assert.equal(mismatched.status, 422);
    assert.match(mismatched.json.error, /does not belong/);
    const installed = await api.put("/api/v1/tls", good);
    assert.equal(installed.status, 200, installed.text);
    assert.ok(installed.json.pending_confirm, "a new certificate waits for confirmation");
    let cn;
    for (let i = 0; i < 50 && cn !== "branch-test.example"; i++) {
      cn = await presentedCommonName(box.httpsPort);
      if (cn !== "branch-test.example") await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(cn, "branch-test.example");
    assert.equal(box.child.pid, pid, "same process");
    assert.equal((await api.post("/api/v1/config/confirm")).status, 200);
    const key = (await api.get("/api/v1/config/admin")).json.tls_private_key;
    assert.equal(key, "********", "the key never comes back");
  } finally { await box.stop(); }
});

test("moving the admin port rebinds at once and rolls back by itself unless confirmed", async () => {
  const { freePort } = await import("./lib/box.mjs");
  const box = await startBox({ provision: { admin: { password: "installer-secret-1", confirm_timeout_seconds: 10 } } });
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    const newPort = await freePort();
    const put = await api.put("/api/v1/config/network", { admin_https_port: newPort });
    assert.equal(put.status, 200, put.text);
    const deadline = put.json.pending_confirm.deadline_ms;
    assert.ok(deadline > Date.now() + 5000 && deadline <= Date.now() + 10500, "10 s to confirm");
    // The new port answers (same process, rebound).
    const moved = new Api(`https://127.0.0.1:${newPort}`);
    let status;
    for (let i = 0; i < 50 && status !== 200; i++) {
      status = await moved.get("/api/v1/status").then((r) => r.status, () => 0);
      if (status !== 200) await new Promise((r) => setTimeout(r, 100));
    }
    assert.equal(status, 200, "the admin UI moved to the new port");
    // Nobody confirms: after the deadline the old port is back.
    await new Promise((r) => setTimeout(r, Math.max(0, deadline - Date.now()) + 2500));
    const back = await new Api(box.url).get("/api/v1/status").then((r) => r.status, (e) => String(e));
    assert.equal(back, 200, "rolled back to the old port");
    const again = new Api(box.url);
    await again.login("admin", "installer-secret-1");
    const history = (await again.get("/api/v1/config/revisions")).json.revisions;
    assert.match(history[0].comment, /automatic rollback/);
    assert.equal((await again.get("/api/v1/config/network")).json.admin_https_port, box.httpsPort);
    // With a confirmation, the move stays.
    const kept = await again.put("/api/v1/config/network", { admin_http_port: await freePort() });
    assert.equal(kept.status, 200);
    assert.equal((await again.post("/api/v1/config/confirm")).status, 200);
    await new Promise((r) => setTimeout(r, 11000));
    assert.equal((await again.get("/api/v1/config/revisions")).json.revisions[0].revision, kept.json.revision);
  } finally { await box.stop(); }
});

test("an optional metrics listener serves /metrics without a login", async () => {
  const { freePort } = await import("./lib/box.mjs");
  const port = await freePort();
  const box = await startBox({ provision: { admin: { password: "installer-secret-1" }, network: { metrics_listen: `127.0.0.1:${port}` } } });
  try {
    const http = await import("node:http");
    const text = await new Promise((resolve, reject) => {
      http.get(`http://127.0.0.1:${port}/metrics`, (res) => { let d = ""; res.on("data", (c) => { d += c; }); res.on("end", () => resolve(d)); }).on("error", reject);
    });
    assert.match(text, /branchgate_up 1/);
  } finally { await box.stop(); }
});
