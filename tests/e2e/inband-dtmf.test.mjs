// DTMF sent as audio tones (an analogue gateway or an old phone): with `media.inband_dtmf` the
// box listens to the caller's audio and hands the keys to a trunk that takes SIP INFO. The
// caller is baresip (Debian) playing a WAV file of DTMF tones instead of pressing keys; the
// trunk is sipp (Debian sip-tester) expecting the keys 1, 5, 9, # as INFO application/dtmf-relay.
import { test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startBox, freePort, Api } from "./lib/box.mjs";
import { startBaresip, dtmfWav } from "./lib/baresip.mjs";
import { sipp, SCENARIOS } from "./lib/sipp.mjs";

const DOMAIN = "branch.example";

for (const codec of ["PCMA", "G722"]) {
  test(`keys a phone sends as ${codec} audio tones reach an INFO trunk as SIP INFO`, async () => {
    const trunkPort = await freePort();
    const base = 20000 + 100 * Math.floor(Math.random() * 99);
    const box = await startBox({
      provision: {
        admin: { password: "installer-secret-1" },
        sip: {
          domain: DOMAIN, users: [{ username: "1001", password: "pw-1001-secret" }],
          trunks: [{ name: "ivr", host: "127.0.0.1", port: trunkPort, transport: "udp", dtmf: "info", keepalive_seconds: 0 }],
          routes: [{ prefix: "8", strip: 1, trunk: "ivr" }],
        },
        media: { rtp_port_min: base, rtp_port_max: base + 99, inband_dtmf: true },
      },
    });
    let phone;
    try {
      const api = new Api(box.url);
      await api.login("admin", "installer-secret-1");
      const tones = join(mkdtempSync(join(tmpdir(), "dtmf-")), "keys.wav");
      // The call is up well within the lead-in; the tail keeps it up while the INFOs go out.
      dtmfWav(tones, "159#", { lead: 2.5, tail: 2 });
      // The trunk answers in the phone's codec (the scenario's PCMA, or G.722 in its place).
      const scenario = join(box.dataDir, "uas_info_dtmf.xml");
      let text = readFileSync(SCENARIOS + "uas_info_dtmf.xml", "utf8");
      if (codec === "G722") text = text.replace("RTP/AVP 8 101", "RTP/AVP 9 101").replace("rtpmap:8 PCMA/8000", "rtpmap:9 G722/8000");
      writeFileSync(scenario, text);
      const ivr = sipp(box, "ivr", ["-sf", scenario, "-p", String(trunkPort),
        "-mp", String(await freePort()), "-rtp_echo"]);
      phone = await startBaresip({ box, user: "1001", password: "pw-1001-secret", domain: DOMAIN, codecs: codec, source: tones });
      phone.dial(`sip:8123@${DOMAIN}`);
      await new Promise((r) => setTimeout(r, 5500));
      phone.hangUp();
      assert.equal(await ivr, 0, `the trunk got 1, 5, 9, # as SIP INFO, then the BYE; box log:\n${(box.stderr ?? "").slice(-2000)}`);
    } finally {
      await phone?.stop();
      await box.stop();
    }
  });
}
