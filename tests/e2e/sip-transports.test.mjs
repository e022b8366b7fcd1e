// SIP over WebSocket (RFC 7118) and TLS: a real JsSIP user agent (npm) registers
// over wss://<box>:<admin port>/sip; the box routes calls back over that connection.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import tls from "node:tls";
import { startBox, Api } from "./lib/box.mjs";

const require = createRequire(import.meta.url);
// JsSIP needs a WebSocket: node 20 has one behind --experimental-websocket (x passes it).
const JsSIP = require("jssip");

const PROVISION = {
  admin: { password: "installer-secret-1" },
  sip: { domain: "branch.example", users: [{ username: "1001", password: "pw-1001-secret" }] },
};

test("JsSIP registers over WSS with digest; the registration is bound to its WebSocket connection", { skip: typeof WebSocket === "undefined" && "no WebSocket in this node" }, async () => {
  const box = await startBox({ provision: PROVISION });
  // The box's certificate is self-signed.
  process.env.NODE_TLS_REJECT_UNAUTHORIZED = "0";
  let ua;
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    const socket = new JsSIP.WebSocketInterface(`wss://127.0.0.1:${box.httpsPort}/sip`);
    ua = new JsSIP.UA({ sockets: [socket], uri: "sip:1001@branch.example", password: "pw-1001-secret", register: true });
    const outcome = new Promise((resolve) => {
      ua.on("registered", () => resolve("registered"));
      ua.on("registrationFailed", (e) => resolve(`failed: ${e.cause}`));
    });
    ua.start();
    assert.equal(await outcome, "registered");
    let list = [];
    for (let i = 0; i < 30 && list.length === 0; i++) {
      await new Promise((r) => setTimeout(r, 100));
      list = (await api.get("/api/v1/sip/registrations")).json.registrations;
    }
    assert.equal(list.length, 1);
    assert.equal(list[0].transport, "WSS");
    assert.match(list[0].contact, /;transport=ws/);
    // A wrong password is refused.
    const bad = new JsSIP.UA({ sockets: [new JsSIP.WebSocketInterface(`wss://127.0.0.1:${box.httpsPort}/sip`)],
      uri: "sip:1001@branch.example", password: "wrong", register: true });
    const refused = new Promise((resolve) => {
      bad.on("registered", () => resolve("registered"));
      bad.on("registrationFailed", (e) => resolve(e.cause));
    });
    bad.start();
    assert.notEqual(await refused, "registered");
    bad.stop();
    // Plain HTTP GET without the upgrade, or without the "sip" subprotocol, gets a clear 400.
    const plain = await api.get("/sip");
    assert.equal(plain.status, 400);
    assert.match(plain.json.error, /WebSocket/);
  } finally {
    ua?.stop();
    await box.stop();
  }
});

test("SIP over TLS on the box's TLS port presents the box certificate and answers OPTIONS", async () => {
  const box = await startBox({ provision: PROVISION });
  try {
    const tlsPort = box.sipTlsPort;
    const answer = await new Promise((resolve, reject) => {
      const socket = tls.connect({ host: "127.0.0.1", port: tlsPort, rejectUnauthorized: false }, () => {
        socket.write(`OPTIONS sip:branch.example SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5099;branch=z9hG4bKtls1\r\n` +
          `From: <sip:probe@branch.example>;tag=1\r\nTo: <sip:branch.example>\r\nCall-ID: tls-probe\r\nCSeq: 1 OPTIONS\r\n` +
          `Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n`);
      });
      let data = "";
      socket.on("data", (d) => { data += d; if (data.includes("\r\n\r\n")) { socket.end(); resolve(data); } });
      socket.on("error", reject);
      setTimeout(() => reject(new Error(`no answer: ${data}`)), 5000);
    });
    assert.match(answer, /^SIP\/2\.0 200 OK\r\n/);
    assert.match(answer, /received=127\.0\.0\.1/);
  } finally { await box.stop(); }
});
