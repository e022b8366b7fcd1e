/*
 * Helper for make-g722.sh: makes the test inputs and runs spandsp's G.722
 * (64 kbit/s, 16 kHz, unpacked: one byte per code) over files.
 *
 *   g722-spandsp gen sweep|tones|square|silence|random OUT
 *   g722-spandsp enc IN.s16le OUT.g722
 *   g722-spandsp dec IN.g722  OUT.s16le
 *   g722-spandsp cmpdec SPANDSP.s16le FFMPEG.s16le
 *
 * cmpdec: spandsp 0.0.6 casts the receive QMF's output to 16 bits (it wraps
 * on overflow), FFmpeg saturates it (as the ITU reference's saturating
 * arithmetic does). The two decoded files must be equal except where FFmpeg
 * saturated and spandsp wrapped to the other sign; exit 1 otherwise.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spandsp.h>

#define RATE 16000
#define SAMPLES 8000 /* 0.5 s */

static uint32_t rng = 0x2545f491u;
static uint32_t xorshift(void) { rng ^= rng << 13; rng ^= rng >> 17; rng ^= rng << 5; return rng; }
/* Uniform in [-1, 1). */
static double white(void) { return (double) (xorshift() >> 8) / (double) (1u << 23) - 1.0; }

static int16_t clip(double x) {
    long v = lround(x);
    return (int16_t) (v > 32767 ? 32767 : v < -32768 ? -32768 : v);
}

static void *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END); *len = (size_t) ftell(f); fseek(f, 0, SEEK_SET);
    void *data = malloc(*len + 1);
    if (fread(data, 1, *len, f) != *len) { perror(path); exit(1); }
    fclose(f);
    return data;
}

static void spit(const char *path, const void *data, size_t len) {
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, len, f) != len) { perror(path); exit(1); }
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc != 4) { fprintf(stderr, "usage: see the comment at the top\n"); return 2; }
    if (!strcmp(argv[1], "gen")) {
        static int16_t pcm[SAMPLES];
        static uint8_t codes[SAMPLES / 2];
        const char *what = argv[2];
        for (int n = 0; n < SAMPLES; n++) {
            double t = (double) n / RATE, x = 0;
            if (!strcmp(what, "sweep")) {
                /* Exponential sweep 50 Hz -> 7.9 kHz at -6 dBFS, plus noise at -40 dBFS. */
                double f0 = 50, f1 = 7900, T = (double) SAMPLES / RATE, k = log(f1 / f0) / T;
                x = 16384 * sin(2 * M_PI * f0 * (exp(k * t) - 1) / k) + 328 * white();
            } else if (!strcmp(what, "tones")) {
                /* 440 Hz and 5.2 kHz (one in each sub-band) plus noise. */
                x = 9000 * sin(2 * M_PI * 440 * t) + 6000 * sin(2 * M_PI * 5200 * t) + 500 * white();
            } else if (!strcmp(what, "square")) {
                /* Full-scale 300 Hz square with hard edges, the extremes of i16, and a burst of
                   alternating full-scale samples (8 kHz, the band edge) in the middle. */
                int half = RATE / 600;
                x = ((n / half) & 1) ? -32768 : 32767;
                if (n >= 4000 && n < 4400) x = (n & 1) ? -32768 : 32767;
            } else if (!strcmp(what, "silence")) {
                x = 0;
            } else if (!strcmp(what, "random")) {
                if (n < SAMPLES / 2) codes[n] = (uint8_t) (xorshift() >> 24);
                continue;
            } else {
                fprintf(stderr, "unknown input %s\n", what); return 2;
            }
            pcm[n] = clip(x);
        }
        if (!strcmp(what, "random")) spit(argv[3], codes, sizeof codes);
        else spit(argv[3], pcm, sizeof pcm);
        return 0;
    }
    size_t len;
    uint8_t *in = slurp(argv[2], &len);
    if (!strcmp(argv[1], "cmpdec")) {
        size_t len2;
        const int16_t *sp = (const int16_t *) in, *ff = slurp(argv[3], &len2);
        size_t wrapped = 0;
        if (len != len2) { fprintf(stderr, "lengths differ: %zu vs %zu\n", len, len2); return 1; }
        for (size_t i = 0; i < len / 2; i++) {
            if (sp[i] == ff[i]) continue;
            if ((ff[i] == 32767 && sp[i] < 0) || (ff[i] == -32768 && sp[i] >= 0)) { wrapped++; continue; }
            fprintf(stderr, "sample %zu: spandsp %d, ffmpeg %d\n", i, sp[i], ff[i]);
            return 1;
        }
        printf("%zu", wrapped);
        return 0;
    }
    if (!strcmp(argv[1], "enc")) {
        g722_encode_state_t *e = g722_encode_init(NULL, 64000, 0);
        int samples = (int) (len / 2);
        uint8_t *out = malloc((size_t) samples / 2 + 1);
        int n = g722_encode(e, out, (const int16_t *) in, samples);
        spit(argv[3], out, (size_t) n);
    } else if (!strcmp(argv[1], "dec")) {
        g722_decode_state_t *d = g722_decode_init(NULL, 64000, 0);
        int16_t *out = malloc(len * 2 * sizeof(int16_t) + 2);
        int n = g722_decode(d, out, in, (int) len);
        spit(argv[3], out, (size_t) n * 2);
    } else {
        fprintf(stderr, "unknown mode %s\n", argv[1]); return 2;
    }
    return 0;
}
