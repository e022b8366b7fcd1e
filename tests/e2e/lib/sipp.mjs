// sipp (Debian sip-tester) as a real SIP peer of the box on loopback.
import { execFile } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { promisify } from "node:util";

const run = promisify(execFile);

/** The scenario files in tests/sipp/. */
export const SCENARIOS = new URL("../../sipp/", import.meta.url).pathname;

/** Runs sipp to the end; resolves with its exit code (0: every call succeeded). */
export function sipp(box, name, args) {
  const all = [...args, "-m", "1", "-l", "1", "-i", "127.0.0.1", "-timeout", "40s", "-timeout_error", "-nostdin",
    "-trace_err", "-trace_msg", "-error_file", join(box.dataDir, `sipp-${name}-errors.log`)];
  return run("sipp", all, { timeout: 60000, cwd: box.dataDir }).then(() => 0, (e) => {
    let log = "";
    try { log = readFileSync(join(box.dataDir, `sipp-${name}-errors.log`), "utf8").slice(-3000); } catch { /* none */ }
    console.log(`sipp ${name} exited ${e.code}: ${e.stderr?.slice(-1500) ?? ""}\n${log}`);
    return e.code ?? 1;
  });
}

