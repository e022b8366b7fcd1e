// Starts a real branchgate daemon for a test: its own data directory, its own
// ports (so tests never clash with a box started by `./x run`), loopback only.
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync, readFileSync, mkdirSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import net from "node:net";
import dgram from "node:dgram";

export const BIN = process.env.BRANCHGATE_BIN || new URL("../../../target/debug/branchgate", import.meta.url).pathname;
export const ARTIFACTS = new URL("../../artifacts/", import.meta.url).pathname;
mkdirSync(ARTIFACTS, { recursive: true });

/**
 * A free TCP port on loopback, from 10000-19999: below the box's media range
 * (20000-29999) and the kernel's ephemeral range, which the box's validation
 * or other sockets would otherwise claim.
 */
export async function freePort() {
  for (;;) {
    const port = 10000 + Math.floor(Math.random() * 10000);
    // Free for TCP and for UDP: the box's SIP and TURN ports are both, and a UDP-only
    // peer (turnutils_peer) on the same number would be one of the box's own ports.
    const tcpFree = await new Promise((resolve) => {
      const server = net.createServer();
      server.once("error", () => resolve(false));
      server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)));
    });
    const udpFree = tcpFree && await new Promise((resolve) => {
      const socket = dgram.createSocket("udp4");
      socket.once("error", () => { socket.close(); resolve(false); });
      socket.bind(port, "127.0.0.1", () => socket.close(() => resolve(true)));
    });
    if (udpFree && !handedOut.has(port)) {
      handedOut.add(port);
      return port;
    }
  }
}

/** Ports this test process handed out already (a port is free until its user binds it). */
const handedOut = new Set();

/**
 * Starts the box. `provision` is merged into a provisioning document that
 * sets free admin ports on 127.0.0.1; `args` are more `branchgate run` flags. Returns {url, dataDir,
 * password, stop, kill, restart}.
 */
export async function startBox({ provision = {}, dataDir, args = [] } = {}) {
  dataDir = dataDir || mkdtempSync(join(tmpdir(), "branchgate-test-"));
  const https = await freePort();
  const http = await freePort();
  const doc = structuredClone(provision);
  doc.network = { admin_bind: "127.0.0.1", admin_https_port: https, admin_http_port: http, rtsp_port: await freePort(), ...(doc.network || {}) };
  // SIP and TURN listen too: give them free ports unless the test chose its own.
  const sip = await freePort();
  doc.sip = { udp_port: sip, tcp_port: sip, tls_port: await freePort(), ...(doc.sip || {}) };
  const turn = await freePort();
  doc.turn = { udp_port: turn, tcp_port: turn, tls_port: await freePort(), ...(doc.turn || {}) };
  // Other listeners are not bound yet; keep their ports clear of the defaults anyway.
  const provisionFile = join(dataDir, "..", `provision-${https}.json`);
  writeFileSync(provisionFile, JSON.stringify(doc));
  const box = {
    dataDir, httpsPort: doc.network.admin_https_port, httpPort: doc.network.admin_http_port, sipPort: doc.sip.udp_port, sipTlsPort: doc.sip.tls_port,
    turnPort: doc.turn.udp_port, turnTlsPort: doc.turn.tls_port, rtspPort: doc.network.rtsp_port,
  };
  box.url = `https://127.0.0.1:${box.httpsPort}`;
  box.args = args;
  await launch(box, provisionFile);
  const initial = join(dataDir, "initial-admin-password");
  try { box.password = readFileSync(initial, "utf8").trim(); } catch { box.password = null; }
  box.stop = () => stopProcess(box, "SIGTERM");
  box.kill = () => stopProcess(box, "SIGKILL");
  // `args`: other flags for the new start (e.g. the version a reboot into the other slot runs).
  box.restart = async (args = box.args) => { await box.stop(); box.args = args; await launch(box, provisionFile); };
  return box;
}

async function launch(box, provisionFile) {
  const child = spawn(BIN, ["run", "--data-dir", box.dataDir, "--provision", provisionFile, ...box.args], {
    stdio: ["ignore", "pipe", "pipe"],
    env: { ...process.env, RUST_LOG: process.env.RUST_LOG || "info" },
  });
  box.child = child;
  box.stdout = "";
  box.stderr = "";
  child.stderr.on("data", (d) => { box.stderr += d; });
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`box not ready in 20 s\n${box.stdout}\n${box.stderr}`)), 20000);
    child.stdout.on("data", (d) => {
      box.stdout += d;
      if (box.stdout.includes("admin UI ready")) { clearTimeout(timer); resolve(); }
    });
    child.on("exit", (code) => { clearTimeout(timer); reject(new Error(`box exited with ${code}\n${box.stderr}`)); });
  });
  child.removeAllListeners("exit");
}

function stopProcess(box, signal) {
  return new Promise((resolve) => {
    if (!box.child || box.child.exitCode !== null || box.child.signalCode !== null) return resolve();
    box.child.once("exit", () => resolve());
    box.child.kill(signal);
  });
}

/** A minimal HTTPS JSON client that accepts the box's self-signed certificate and keeps the session cookie. */
export class Api {
  constructor(base) { this.base = base; this.cookie = null; }
  async request(method, path, { body, headers = {}, raw } = {}) {
    const { request } = await import("node:https");
    const url = new URL(path, this.base);
    const payload = raw !== undefined ? raw : body !== undefined ? JSON.stringify(body) : undefined;
    return new Promise((resolve, reject) => {
      const req = request(url, {
        method, rejectUnauthorized: false, agent: false,
        headers: {
          ...(payload !== undefined ? { "content-type": "application/json", "content-length": Buffer.byteLength(payload) } : {}),
          ...(this.cookie ? { cookie: this.cookie } : {}),
          ...headers,
        },
      }, (res) => {
        const chunks = [];
        res.on("data", (d) => { chunks.push(d); });
        res.on("end", () => {
          const bytes = Buffer.concat(chunks);
          const data = bytes.toString();
          const set = res.headers["set-cookie"];
          if (set) { for (const c of set) { if (c.startsWith("__Host-branchgate=")) this.cookie = c.split(";")[0]; } }
          let json = null;
          try { json = JSON.parse(data); } catch { /* not JSON */ }
          resolve({ status: res.statusCode, headers: res.headers, text: data, json, bytes });
        });
      });
      req.on("error", reject);
      if (payload !== undefined) req.write(payload);
      req.end();
    });
  }
  get(path, opts) { return this.request("GET", path, opts); }
  post(path, body, opts = {}) { return this.request("POST", path, { body, ...opts }); }
  put(path, body, opts = {}) { return this.request("PUT", path, { body, ...opts }); }
  async login(username, password) {
    const r = await this.post("/api/v1/session", { username, password });
    if (r.status !== 200) throw new Error(`login failed: ${r.status} ${r.text}`);
    return r;
  }
}

/** TURN settings for a lab on loopback: one user, relays on 127.0.0.1, loopback peers opened. */
export const LAB_TURN = {
  relay_ip: "127.0.0.1", relay_port_min: 31000, relay_port_max: 31999, realm: "branch.example",
  users: [{ username: "test", password: "secret" }], allowed_peers: ["127.0.0.1/32"],
};

export const CHROMIUM_ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync",
];

/** Polls `check` every `everyMs` until it gives something truthy (returned), at most `tries` times. */
export async function waitFor(what, check, tries = 100, everyMs = 100) {
  for (let i = 0; i < tries; i++) {
    const value = await check();
    if (value) return value;
    await new Promise((r) => setTimeout(r, everyMs));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** A page of `browser` logged in to `box`'s admin as admin (a provisioned password, no forced change). */
export async function adminPage(browser, box, password, viewport = { width: 1280, height: 1000 }) {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport });
  const page = await context.newPage();
  page.on("console", (m) => { if (process.env.PAGE_LOG || m.type() === "error") console.log("page:", m.text()); });
  await page.goto(box.url + "/login");
  await page.fill("#username", "admin");
  await page.fill("#password", password);
  await page.click("main form button[type=submit]");
  await page.waitForURL((u) => !u.pathname.startsWith("/login"));
  return page;
}
