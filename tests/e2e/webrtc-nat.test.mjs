// A browser in a branch LAN behind NAT whose firewall lets UDP out only to
// the box's TURN port calls a SIP phone: the call's media must go through
// the box's own TURN relay to the box's media port (the reason the box has a
// TURN server). Three network namespaces made here: LAN (Chromium),
// router (nftables masquerade + UDP filter), public (the box, baresip).
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { mkdtempSync, writeFileSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const run = promisify(execFile);
const TURN_PORT = 3478;
const BOX_IP = "10.77.2.2";

async function inNs(ns, ...command) {
  return run("ip", ["netns", "exec", ns, ...command]);
}

test("a browser behind a NAT that only lets the box's TURN port through calls a SIP phone: media goes through the box's TURN", async () => {
  const id = process.pid % 100000;
  const [lan, router, pub] = [`bglan${id}`, `bgrtr${id}`, `bgpub${id}`];
  for (const ns of [lan, router, pub]) await run("ip", ["netns", "add", ns]);
  try {
    await run("ip", ["link", "add", "lan0", "netns", lan, "type", "veth", "peer", "name", "rl0", "netns", router]);
    await run("ip", ["link", "add", "rp0", "netns", router, "type", "veth", "peer", "name", "pub0", "netns", pub]);
    for (const [ns, dev, addr] of [[lan, "lan0", "10.77.1.2/24"], [router, "rl0", "10.77.1.1/24"], [router, "rp0", "10.77.2.1/24"], [pub, "pub0", `${BOX_IP}/24`]]) {
      await inNs(ns, "ip", "addr", "add", addr, "dev", dev);
      await inNs(ns, "ip", "link", "set", dev, "up");
    }
    for (const ns of [lan, router, pub]) await inNs(ns, "ip", "link", "set", "lo", "up");
    await inNs(lan, "ip", "route", "add", "default", "via", "10.77.1.1");
    await inNs(router, "sysctl", "-qw", "net.ipv4.ip_forward=1");
    const rules = join(mkdtempSync(join(tmpdir(), "nat-")), "router.nft");
    writeFileSync(rules, [
      "table ip nat {",
      "  chain postrouting {",
      "    type nat hook postrouting priority 100;",
      '    oifname "rp0" masquerade',
      "  }",
      "}",
      "table inet filter {",
      "  chain forward {",
      "    type filter hook forward priority 0; policy accept;",
      `    iifname "rl0" meta l4proto udp udp dport != ${TURN_PORT} drop`,
      "  }",
      "}",
      "",
    ].join("\n"));
    await inNs(router, "nft", "-f", rules);
    // Playwright starts Chromium through this launcher, which enters the LAN namespace.
    const launcher = join(mkdtempSync(join(tmpdir(), "nat-")), "chromium-in-lan");
    writeFileSync(launcher, `#!/bin/sh\nexec ip netns exec ${lan} /usr/bin/chromium "$@"\n`);
    chmodSync(launcher, 0o755);
    const script = new URL("./lib/nat-call.mjs", import.meta.url).pathname;
    const r = await inNs(pub, process.execPath, script, BOX_IP, String(TURN_PORT), launcher)
      .then((x) => ({ code: 0, ...x }), (e) => ({ code: e.code ?? 1, stdout: e.stdout ?? "", stderr: e.stderr ?? "" }));
    console.log(r.stdout.trim());
    assert.equal(r.code, 0, `${r.stdout}\n${r.stderr.slice(-3000)}`);
    assert.match(r.stdout, /NAT call through the box's TURN/);
  } finally {
    for (const ns of [lan, router, pub]) await run("ip", ["netns", "del", ns]).catch(() => {});
  }
});
