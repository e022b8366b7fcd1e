#!/usr/bin/env bash
# ./x bench transcode: Opus <-> PCMU transcoding capacity, calls per core.
# Ours: media/dsp's example transcode_capacity (two Transcoders per call, 20 ms ticks, the
# mean over the loads it runs). Anchor, same machine, same run: ffmpeg (libopus, Debian)
# doing the same two conversions for 120 s of speech-like audio — Opus (24 kb/s, VoIP,
# complexity 5, 20 ms) decoded to 8 kHz PCMU, and PCMU encoded to Opus — its CPU per second
# of audio gives its calls per core. Higher is better.
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$(dirname "$0")/../.."

echo "== ours: cargo run --release -p branchgate-dsp --example transcode_capacity"
cargo run -q --release --locked -p branchgate-dsp --example transcode_capacity | tee "$work/ours.txt"
ours=$(awk '$1 ~ /^[0-9]+$/ {print $5}' "$work/ours.txt" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')

echo "== anchor: ffmpeg $(ffmpeg -version | awk 'NR==1 {print $3}') with libopus"
seconds=120
# Speech-like test signal: three formants, a slow envelope, a little noise (as the example).
ffmpeg -v error -f lavfi -i "aevalsrc='(0.5+0.5*abs(sin(2*PI*3*t)))*(0.5*sin(2*PI*500*t)+0.3*sin(2*PI*1500*t)+0.2*sin(2*PI*2500*t))*0.27+0.005*(random(0)-0.5)':s=8000:d=$seconds" \
  -ac 1 -c:a pcm_mulaw -f mulaw "$work/speech.ul"
ffmpeg -v error -f mulaw -ar 8000 -ac 1 -i "$work/speech.ul" -c:a libopus -b:a 24k -application voip \
  -compression_level 5 -frame_duration 20 "$work/speech.opus"
cpu() { /usr/bin/time -f '%U %S' "$@" 2>&1 >/dev/null | tail -1 | awk '{print $1 + $2}'; }
# Each direction three times; the fastest run counts (the least disturbed by the rest of the machine).
best() { local b=999 t i; for i in 1 2 3; do t=$(cpu "$@"); b=$(echo "if ($t < $b) $t else $b" | bc -l); done; echo "$b"; }
to_pcmu=$(best ffmpeg -v error -threads 1 -c:a libopus -i "$work/speech.opus" -ar 8000 -c:a pcm_mulaw -f mulaw -y /dev/null)
to_opus=$(best ffmpeg -v error -threads 1 -f mulaw -ar 8000 -ac 1 -i "$work/speech.ul" -c:a libopus -b:a 24k \
  -application voip -compression_level 5 -frame_duration 20 -f ogg -y /dev/null)
anchor=$(echo "$seconds / ($to_pcmu + $to_opus)" | bc -l)
printf 'ffmpeg: %.2f s CPU Opus->PCMU + %.2f s CPU PCMU->Opus for %d s of audio\n' "$to_pcmu" "$to_opus" "$seconds"
printf '\n%-40s %10s %10s %8s\n' "transcoded Opus<->PCMU calls per core" ours ffmpeg ratio
printf '%-40s %10.0f %10.0f %8.2f\n' "(mean, higher is better)" "$ours" "$anchor" "$(echo "$ours / $anchor" | bc -l)"
