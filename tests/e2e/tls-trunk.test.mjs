// Calls out to a SIP trunk over TLS: baresip (Debian) plays the trunk, listening for SIP over
// TLS with a self-signed certificate for 127.0.0.1; the trunk's `tls_ca` is that certificate.
// The box must check it: without `tls_ca` the same trunk is refused (the handshake fails) and
// the caller gets 503 after failover.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { waitFor, startBox, Api, ARTIFACTS } from "./lib/box.mjs";
import { startBaresip, readWav, toneShare } from "./lib/baresip.mjs";

const DOMAIN = "branch.example";

/** A self-signed P-256 certificate for 127.0.0.1 (IP subjectAltName): {certificate, both}. */
function selfSigned() {
  const dir = mkdtempSync(join(tmpdir(), "tls-trunk-"));
  const [key, cert] = [join(dir, "key.pem"), join(dir, "cert.pem")];
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-days", "2", "-keyout", key, "-out", cert],
  { stdio: "ignore" });
  const certificate = readFileSync(cert, "utf8");
  const both = join(dir, "both.pem");
  writeFileSync(both, certificate + readFileSync(key, "utf8"));
  return { certificate, both };
}


test("a TLS trunk whose self-signed certificate is not trusted is refused; once tls_ca names it, calls go out over TLS with audio both ways", async () => {
  const { certificate, both } = selfSigned();
  // baresip answers calls to its account's user: the number the route leaves.
  const trunk = await startBaresip({ user: "5551234", codecs: "PCMU", tone: 1000, certificate: both, trunk: true });
  const secure = { name: "secure", host: "127.0.0.1", port: trunk.tlsPort, transport: "tls", keepalive_seconds: 0 };
  const box = await startBox({
    provision: {
      admin: { password: "installer-secret-1" },
      sip: {
        domain: DOMAIN, users: [{ username: "1001", password: "pw-1001-secret" }],
        trunks: [secure], routes: [{ prefix: "9", strip: 1, trunk: "secure" }],
      },
    },
  });
  let caller;
  try {
    const api = new Api(box.url);
    await api.login("admin", "installer-secret-1");
    const cdr = async () => new TextDecoder().decode((await api.get("/api/v1/sip/cdr.csv")).bytes);

    // Not trusted: the system's CAs do not know a self-signed certificate.
    caller = await startBaresip({ box, user: "1001", password: "pw-1001-secret", domain: DOMAIN, codecs: "PCMU", tone: 440 });
    caller.dial(`sip:95551234@${DOMAIN}`);
    await waitFor("the refused call's record", async () => /"1001","95551234","secure","50[34]"/.test(await cdr()));
    assert.match(box.stderr ?? "", /TLS handshake failed.*(UnknownIssuer|CaUsedAsEndEntity)/);
    await caller.stop();

    // The installer pastes the trunk's certificate into tls_ca.
    const sip = (await api.get("/api/v1/config/sip")).json;
    delete sip.revision;
    sip.trunks[0].tls_ca = certificate;
    const put = await api.put("/api/v1/config/sip", sip);
    assert.equal(put.status, 200, JSON.stringify(put.json));
    caller = await startBaresip({ box, user: "1001", password: "pw-1001-secret", domain: DOMAIN, codecs: "PCMU", tone: 440 });
    caller.dial(`sip:95551234@${DOMAIN}`);
    await waitFor("the trunk to answer", async () => (await api.get("/api/v1/sip/calls")).json.calls.some((c) => c.state === "answered"));
    await new Promise((r) => setTimeout(r, 3000));
    caller.hangUp();
    await waitFor("the call to end", async () => (await api.get("/api/v1/sip/calls")).json.calls.length === 0);
    await caller.stop();
    const heard = readWav(caller.heard());
    assert.ok(heard && heard.samples.length > 8000, "the caller recorded the call");
    const share = toneShare(heard.samples.subarray(heard.sampleRate), heard.sampleRate, 1000);
    console.log(`1 kHz share of what the caller heard from the TLS trunk: ${share.toFixed(2)}`);
    assert.ok(share > 0.5, `the trunk's 1 kHz tone is ${(share * 100).toFixed(0)}% of what the caller heard`);
    assert.match(await cdr(), /"1001","95551234","secure","200"/);

    // The installer replaces tls_ca with another certificate: the connection opened under the
    // old trust is closed, and the next call's handshake fails (no reuse of a withdrawn trust).
    sip.trunks[0].tls_ca = selfSigned().certificate;
    const replaced = await api.put("/api/v1/config/sip", sip);
    assert.equal(replaced.status, 200, JSON.stringify(replaced.json));
    await waitFor("the old connection to close", async () => /TLS trust changed: connection closed/.test(box.stderr ?? ""));
    caller = await startBaresip({ box, user: "1001", password: "pw-1001-secret", domain: DOMAIN, codecs: "PCMU", tone: 440 });
    caller.dial(`sip:95551234@${DOMAIN}`);
    await waitFor("the refused call's record", async () => (await cdr()).match(/"1001","95551234","secure","50[34]"/g)?.length === 2);
  } finally {
    await caller?.stop();
    await trunk.stop();
    await box.stop();
    writeFileSync(join(ARTIFACTS, "tls-trunk-box.log"), box.stderr ?? "");
    writeFileSync(join(ARTIFACTS, "tls-trunk-baresip.log"), trunk.output);
  }
});
