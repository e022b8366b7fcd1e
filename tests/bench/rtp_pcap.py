#!/usr/bin/env python3
"""Writes a pcap of one G.711 µ-law (PCMU, payload type 0) RTP stream for sipp's
play_pcap_audio: 20 ms packets (50 per second, 160 bytes of payload) for the
seconds given. sipp's own g711a.pcap has 30 ms packets (33 per second) and lasts
7 s; the media benchmark wants a telephone's usual 50 packets per second.

usage: rtp_pcap.py OUT.pcap SECONDS
"""
import math
import struct
import sys


def checksum(header: bytes) -> int:
    total = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def ulaw(sample: int) -> int:
    """G.711 µ-law of a 16-bit linear sample."""
    sign = 0x80 if sample < 0 else 0
    magnitude = min(abs(sample), 32635) + 0x84
    exponent = max(0, magnitude.bit_length() - 8)
    mantissa = (magnitude >> (exponent + 3)) & 0x0F
    return ~(sign | (exponent << 4) | mantissa) & 0xFF


def main() -> None:
    out, seconds = sys.argv[1], float(sys.argv[2])
    # A 400 Hz tone: one period is 20 samples, so every packet carries the same payload.
    payload = bytes(ulaw(int(8000 * math.sin(2 * math.pi * 400 * n / 8000))) for n in range(160))
    with open(out, "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))  # Ethernet link type
        for i in range(int(seconds * 50)):
            rtp = struct.pack("!BBHII", 0x80, 0, i & 0xFFFF, (i * 160) & 0xFFFFFFFF, 0x62674D31) + payload
            udp = struct.pack("!HHHH", 6000, 6000, 8 + len(rtp), 0) + rtp
            ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0xB8, 20 + len(udp), i & 0xFFFF, 0, 64, 17, 0,
                             bytes([127, 0, 0, 1]), bytes([127, 0, 0, 1]))
            ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
            frame = b"\x00" * 12 + b"\x08\x00" + ip + udp
            t = i * 20_000  # µs
            f.write(struct.pack("<IIII", t // 1_000_000, t % 1_000_000, len(frame), len(frame)))
            f.write(frame)


if __name__ == "__main__":
    main()
