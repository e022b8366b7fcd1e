#!/bin/sh
# Regenerates the G.722 test vectors in this directory (the committed files are what the tests
# read; this script is only for regenerating them or checking them again).
#
# ITU-T G.722's own test sequences (Appendix II) cannot be downloaded here, so the vectors come
# from two independent implementations that must agree bit for bit: spandsp 0.0.6 (libspandsp-dev,
# through the small g722-spandsp.c beside this script) and FFmpeg's adpcm_g722 (5.1). Both run the
# 64 kbit/s mode on 16 kHz PCM, one byte per code (RFC 3551 §4.5.2 payload order).
#
# For every input NAME (0.5 s, 16 kHz, s16le):
#   NAME.pcm      the input (made by `g722-spandsp gen`)
#   NAME.g722     its codes (spandsp encoder == FFmpeg encoder)
#   NAME.dec.pcm  those codes decoded (spandsp decoder == FFmpeg decoder, see below)
# and random.g722 (4000 random bytes: every byte is a valid code) with random.dec.pcm, codes no
# encoder produced.
#
# The decoders differ in one place: the receive QMF's output can exceed 16 bits on loud input
# (the square wave, random codes). FFmpeg saturates it, as the ITU reference's saturating
# arithmetic does; spandsp 0.0.6 casts it, so it wraps to the other sign. `cmpdec` accepts
# exactly those samples (FFmpeg at 32767/-32768, spandsp on the other side) and nothing else, and
# the stored decoded PCM is FFmpeg's, the saturated one. The encoders agree everywhere.
#
# Needs: gcc, pkg-config, libspandsp-dev, ffmpeg. Usage: sh make-g722.sh
set -eu
cd "$(dirname "$0")"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# shellcheck disable=SC2046 # pkg-config's flags are meant to split
gcc -O2 -Wall -o "$work/g722-spandsp" g722-spandsp.c $(pkg-config --cflags --libs spandsp) -lm
sp="$work/g722-spandsp"
ff() { ffmpeg -hide_banner -loglevel error -y "$@"; }

same() {
    if ! cmp -s "$1" "$2"; then
        echo "MISMATCH: $1 vs $2" >&2
        exit 1
    fi
}

decode() { # codes.g722 out.pcm
    "$sp" dec "$1" "$work/sp.dec"
    ff -f g722 -i "$1" -f s16le -acodec pcm_s16le "$work/ff.dec"
    wrapped=$("$sp" cmpdec "$work/sp.dec" "$work/ff.dec")
    cp "$work/ff.dec" "$2"
    echo "decoded $1: spandsp == ffmpeg except $wrapped samples spandsp wrapped and ffmpeg saturated"
}

for name in sweep tones square silence; do
    "$sp" gen "$name" "$name.pcm"
    "$sp" enc "$name.pcm" "$work/sp.g722"
    ff -f s16le -ar 16000 -ac 1 -i "$name.pcm" -c:a adpcm_g722 -f g722 "$work/ff.g722"
    same "$work/sp.g722" "$work/ff.g722"
    cp "$work/sp.g722" "$name.g722"
    decode "$name.g722" "$name.dec.pcm"
    echo "$name: $(wc -c <"$name.g722") codes, spandsp == ffmpeg"
done

"$sp" gen random random.g722
decode random.g722 random.dec.pcm
echo "random: $(wc -c <random.g722) codes, spandsp == ffmpeg"
