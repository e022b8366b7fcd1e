// baresip (Debian `baresip-core`) as a real SIP phone on loopback: registers
// with the box over UDP, answers calls by itself, sends a sine tone and
// writes what it hears to a WAV file.
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, writeFileSync, readFileSync, readdirSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePort } from "./box.mjs";

/**
 * Starts baresip registered as `user` at the box. Returns {heard(), stop(), output}.
 * `codecs` is baresip's audio codec list for the account (e.g. "PCMU,PCMA").
 * With `certificate` (PEM file of certificate and key) baresip also takes SIP over TLS, on
 * `phone.tlsPort` (its UDP/TCP port + 1); with `trunk` it registers nowhere and answers
 * whatever reaches it, as a SIP trunk would. With `source` (a mono 48 kHz WAV file, e.g. from
 * `dtmfWav`) baresip sends that file instead of the sine tone.
 */
export async function startBaresip({ box, user, password, domain, codecs = "PCMU,PCMA", tone = 1000, certificate, trunk = false, source }) {
  const home = mkdtempSync(join(tmpdir(), "baresip-"));
  mkdirSync(join(home, ".baresip"));
  const sipPort = await freePort();
  const rtpStart = await freePort();
  writeFileSync(join(home, ".baresip", "config"), [
    "poll_method epoll",
    `sip_listen 127.0.0.1:${sipPort}`,
    ...(certificate ? [`sip_certificate ${certificate}`] : []),
    // No player (user-space ALSA devices are not paced in real time): the sndfile
    // filter records what baresip decodes, as the RTP arrives.
    "audio_player none,none",
    `snd_path ${home}`,
    ...(source
      ? [`audio_source aufile,${source}`, "ausrc_srate 48000", "ausrc_channels 1"]
      // ausine produces 48 kHz stereo only; baresip resamples to the codec's rate.
      : [`audio_source ausine,${tone}`, "ausrc_srate 48000", "ausrc_channels 2"]),
    "audio_alert aufile,/dev/null",
    `rtp_ports ${rtpStart}-${rtpStart + 10}`,
    "module_path /usr/lib/baresip/modules",
    "module g711.so",
    "module g722.so",
    "module ausine.so",
    "module aufile.so",
    "module sndfile.so",
    "module account.so",
    // Commands (e.g. "/dial <uri>") come on stdin.
    "module stdio.so",
    "module_app menu.so",
    "",
  ].join("\n"));
  writeFileSync(join(home, ".baresip", "accounts"), trunk
    ? `<sip:${user}@127.0.0.1>;answermode=auto;audio_codecs=${codecs};regint=0\n`
    : `<sip:${user}@${domain}>;outbound="sip:127.0.0.1:${box.sipPort}";auth_pass=${password};` +
      `answermode=auto;audio_codecs=${codecs};regint=60\n`);
  const child = spawn("baresip", [...(process.env.BARESIP_TRACE ? ["-s"] : []), "-f", join(home, ".baresip")], { env: { ...process.env, HOME: home }, stdio: ["pipe", "pipe", "pipe"] });
  const phone = { home, output: "", child, sipPort, tlsPort: sipPort + 1 };
  /** The WAV file of what baresip decoded in its last call (sndfile names it by date). */
  phone.heard = () => readdirSync(home).filter((f) => f.endsWith("-dec.wav")).sort().map((f) => join(home, f)).pop();
  child.stdout.on("data", (d) => { phone.output += d; });
  child.stderr.on("data", (d) => { phone.output += d; });
  const ready = trunk ? /baresip is ready/ : /200 OK|registered/i;
  for (let i = 0; i < 100 && !ready.test(phone.output); i++) await new Promise((r) => setTimeout(r, 100));
  /** Calls `uri` (baresip's menu command on its stdin). */
  phone.dial = (uri) => child.stdin.write(`/dial ${uri}\n`);
  /** Keys pressed in a call (baresip sends each digit as RFC 4733 events), one every 300 ms. */
  phone.press = async (keys) => {
    for (const key of keys) {
      child.stdin.write(key);
      await new Promise((r) => setTimeout(r, 300));
    }
  };
  phone.hangUp = () => child.stdin.write("/hangup\n");
  phone.stop = () => new Promise((resolve) => {
    if (child.exitCode !== null) return resolve();
    child.once("exit", resolve);
    child.kill("SIGTERM");
    setTimeout(() => child.kill("SIGKILL"), 2000);
  });
  return phone;
}

/**
 * Writes a mono 48 kHz WAV file of DTMF keys played as audio (ITU-T Q.23 tone pairs, each
 * tone at -10 dBm0-ish), as an old phone or an analogue gateway sends them: `lead` seconds of
 * silence, each key for `toneMs` with `gapMs` of silence after it, then `tail` seconds of silence.
 */
export function dtmfWav(path, keys, { lead = 2, toneMs = 120, gapMs = 120, tail = 2, rate = 48000 } = {}) {
  const pairs = { 1: [697, 1209], 2: [697, 1336], 3: [697, 1477], 4: [770, 1209], 5: [770, 1336], 6: [770, 1477],
    7: [852, 1209], 8: [852, 1336], 9: [852, 1477], "*": [941, 1209], 0: [941, 1336], "#": [941, 1477] };
  const pcm = [...new Array(Math.round(lead * rate)).fill(0)];
  for (const key of keys) {
    const [low, high] = pairs[key];
    for (let i = 0; i < (toneMs * rate) / 1000; i++) {
      pcm.push(Math.round(5000 * (Math.sin((2 * Math.PI * low * i) / rate) + Math.sin((2 * Math.PI * high * i) / rate))));
    }
    pcm.push(...new Array(Math.round((gapMs * rate) / 1000)).fill(0));
  }
  pcm.push(...new Array(Math.round(tail * rate)).fill(0));
  writeWav(path, pcm, rate);
}

/** Writes mono 16-bit PCM samples (an array of integers) as a WAV file. */
export function writeWav(path, pcm, rate) {
  const data = Buffer.alloc(44 + pcm.length * 2);
  data.write("RIFF", 0); data.writeUInt32LE(36 + pcm.length * 2, 4); data.write("WAVE", 8);
  data.write("fmt ", 12); data.writeUInt32LE(16, 16); data.writeUInt16LE(1, 20); data.writeUInt16LE(1, 22);
  data.writeUInt32LE(rate, 24); data.writeUInt32LE(rate * 2, 28); data.writeUInt16LE(2, 32); data.writeUInt16LE(16, 34);
  data.write("data", 36); data.writeUInt32LE(pcm.length * 2, 40);
  pcm.forEach((v, i) => data.writeInt16LE(v, 44 + 2 * i));
  writeFileSync(path, data);
}

/** Reads a 16-bit PCM WAV file: {sampleRate, samples (Int16Array)}, or null when absent. */
export function readWav(path) {
  if (!path || !existsSync(path)) return null;
  const data = readFileSync(path);
  if (data.length < 44) return null;
  const sampleRate = data.readUInt32LE(24);
  // Find the "data" chunk (baresip writes a plain 44-byte header).
  let offset = 12;
  while (offset + 8 <= data.length) {
    const id = data.toString("ascii", offset, offset + 4);
    const size = data.readUInt32LE(offset + 4);
    if (id === "data") {
      const end = Math.min(data.length, offset + 8 + (size || data.length));
      const bytes = data.subarray(offset + 8, end - ((end - offset - 8) % 2));
      return { sampleRate, samples: new Int16Array(bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.length)) };
    }
    offset += 8 + size;
  }
  return null;
}

/** Goertzel power ratio of `frequency` in `samples` against the total energy (0..1). */
export function toneShare(samples, sampleRate, frequency) {
  if (!samples || samples.length === 0) return 0;
  const k = 2 * Math.cos((2 * Math.PI * frequency) / sampleRate);
  let s1 = 0, s2 = 0, energy = 0;
  for (const x of samples) {
    const s0 = x + k * s1 - s2;
    s2 = s1; s1 = s0;
    energy += x * x;
  }
  const power = s1 * s1 + s2 * s2 - k * s1 * s2;
  return energy === 0 ? 0 : (2 * power) / (samples.length * energy);
}

/** The DTMF keys baresip received as RFC 4733 events (it prints each event's start and end). */
export function receivedDtmf(output) {
  return [...output.matchAll(/received event: '(.)' \(end=1\)/g)].map((m) => m[1]).join("");
}
