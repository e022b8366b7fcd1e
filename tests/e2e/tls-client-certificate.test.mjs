// Mutual TLS to a trunk: Kamailio (Debian, with its tls module) plays a carrier's SBC that
// requires a client certificate and trusts only the box's own (self-signed) certificate. The
// box's OPTIONS keepalives reach it only once the trunk says `tls_client_certificate: true`;
// before, the handshake fails and the trunk is down.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn, spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitFor, startBox, freePort, Api, ARTIFACTS } from "./lib/box.mjs";

const KAMAILIO = "/usr/sbin/kamailio";
const MODULES = "/usr/lib/x86_64-linux-gnu/kamailio/modules";

/** The SBC's own self-signed certificate for 127.0.0.1, in `dir`; returns its PEM. */
function sbcCertificate(dir) {
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "2",
    "-keyout", join(dir, "kam-key.pem"), "-out", join(dir, "kam-cert.pem")], { stdio: "ignore" });
  return readFileSync(join(dir, "kam-cert.pem"), "utf8");
}

/** Kamailio answering OPTIONS over TLS on `port`, requiring a client certificate issued by `clientCa`. */
async function startKamailio(dir, port, clientCa) {
  const [key, cert] = [join(dir, "kam-key.pem"), join(dir, "kam-cert.pem")];
  writeFileSync(join(dir, "client-ca.pem"), clientCa);
  writeFileSync(join(dir, "tls.cfg"), `[server:default]
method = TLSv1.2+
verify_certificate = yes
require_certificate = yes
private_key = ${key}
certificate = ${cert}
ca_list = ${join(dir, "client-ca.pem")}
`);
  writeFileSync(join(dir, "kamailio.cfg"), `#!KAMAILIO
debug=2
log_stderror=yes
children=1
tcp_children=1
enable_tls=yes
auto_aliases=no
listen=tls:127.0.0.1:${port}
listen=udp:127.0.0.1:${port}
mpath="${MODULES}/"
loadmodule "tls.so"
loadmodule "sl.so"
loadmodule "pv.so"
loadmodule "xlog.so"
modparam("tls", "config", "${join(dir, "tls.cfg")}")
request_route {
  if (method == "OPTIONS") {
    xlog("L_NOTICE", "OPTIONS over $proto, client certificate verified: $tls_peer_verified\\n");
    sl_send_reply("200", "OK");
    exit;
  }
  sl_send_reply("403", "Forbidden");
}
`);
  const child = spawn(KAMAILIO, ["-f", join(dir, "kamailio.cfg"), "-DD", "-E", "-Y", dir, "-P", join(dir, "kamailio.pid")], { stdio: ["ignore", "pipe", "pipe"] });
  const kam = { child, output: "" };
  child.stdout.on("data", (d) => { kam.output += d; });
  child.stderr.on("data", (d) => { kam.output += d; });
  const exited = new Promise((resolve) => child.once("exit", resolve));
  kam.stop = async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGTERM");
      setTimeout(() => child.kill("SIGKILL"), 3000).unref();
    }
    await exited;
  };
  // Up once it listens on the TLS port (or gone, with its reason in the output).
  for (let i = 0; i < 50; i++) {
    if (child.exitCode !== null) throw new Error(`kamailio did not start:\n${kam.output}`);
    if (spawnSync("sh", ["-c", `ss -ltn | grep -q ':${port} '`]).status === 0) return kam;
    await new Promise((r) => setTimeout(r, 100));
  }
  await kam.stop();
  throw new Error(`kamailio did not listen on ${port}:\n${kam.output}`);
}


test("a trunk that requires a client certificate: refused without one, up once the box presents its own", async (t) => {
  if (spawnSync("sh", ["-c", `test -x ${KAMAILIO} && test -f ${MODULES}/tls.so`]).status !== 0) {
    t.skip("*** kamailio or kamailio-tls-modules missing: mutual TLS e2e SKIPPED ***");
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), "mtls-"));
  const port = await freePort();
  // The box trusts the SBC's certificate from the start (tls_ca).
  const sbc = { name: "carrier", host: "127.0.0.1", port, transport: "tls", keepalive_seconds: 1, tls_ca: sbcCertificate(dir) };
  const box = await startBox({ provision: { admin: { password: "installer-secret-1" }, sip: { domain: "branch.example", trunks: [sbc] } } });
  let kamailio;
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    // The SBC trusts the box's certificate (the one its admin page serves).
    const boxCertificate = readFileSync(join(box.dataDir, "tls", "self-signed.crt"), "utf8");
    kamailio = await startKamailio(dir, port, boxCertificate);
    const sip = (await api.get("/api/v1/config/sip")).json;
    delete sip.revision;
    const trunk = async () => (await api.get("/api/v1/sip/calls")).json.trunks.find((x) => x.name === "carrier");

    // No client certificate: the SBC ends the handshake (TLS 1.3: right after it), OPTIONS get
    // no answer, and the trunk is marked down.
    // The API's view is published once a second, after the log line: wait for both.
    await waitFor("the trunk to be down", async () => /trunk carrier is down/.test(box.stderr ?? ""), 200);
    await waitFor("the API to say the trunk is down", async () => (await trunk()).up === false, 50);
    assert.doesNotMatch(kamailio.output, /OPTIONS over tls/);

    // The installer turns on the box's client certificate for this trunk.
    sip.trunks[0].tls_client_certificate = true;
    assert.equal((await api.put("/api/v1/config/sip", sip)).status, 200);
    await waitFor("OPTIONS over mutual TLS", async () => /OPTIONS over tls, client certificate verified: 1/.test(kamailio.output));
    await waitFor("the trunk to be up", async () => (await trunk()).up === true);

    // A client certificate on a trunk that is not TLS is refused, the stored one kept.
    const udp = structuredClone(sip);
    udp.trunks[0].transport = "udp";
    delete udp.trunks[0].tls_ca;
    const refused = await api.put("/api/v1/config/sip", udp);
    assert.equal(refused.status, 422);
    assert.deepEqual(refused.json.fields.map((f) => f.path), ["sip.trunks[0].tls_client_certificate"]);
    assert.equal((await api.get("/api/v1/config/sip")).json.trunks[0].tls_client_certificate, true);
  } finally {
    writeFileSync(join(ARTIFACTS, "mtls-kamailio.log"), kamailio?.output ?? "");
    await kamailio?.stop();
    await box.stop();
  }
});
