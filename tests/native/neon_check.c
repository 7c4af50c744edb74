/*
 * The NEON path against the scalar reference, for a machine without an arm64 CPU:
 * tests/test_neon_emulated.py builds this file with the library's sources for
 * arm64 and runs it under qemu-aarch64. What must agree is what
 * tests/test_kernels_isa.py asks of every path: the quantized dot products and
 * the activation encoders bit for bit, the float dot products to 1e-5 of
 * sum |w_i x_i|, and the attention kernels of the path's table bit for bit.
 * Prints one line per check and exits non-zero if any fails.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "lowbit.h"

static unsigned g_failures;

static void report(int ok, const char *what, int type) {
    printf("%s %s %d\n", ok ? "ok  " : "FAIL", what, type);
    g_failures += !ok;
}

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float rnd(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / 8388608.0) - 1.0);
}

/* Switch paths, and make sure the switch happened: comparing a path with
 * itself would pass whatever the kernels do. */
static int set_path(const char *name) {
    if (lb_set_isa(name) != LB_OK || strcmp(lb_isa(), name) != 0) {
        printf("FAIL lb_set_isa(%s): %s\n", name, lb_last_error());
        g_failures++;
        return 0;
    }
    return 1;
}

/* Inputs of several shapes: plain, with outliers, exact ties at scale 1 for
 * the 8-bit formats, zeros, blocks from 1e-44 to 1e-26 (either side of
 * Q16's cut, and of Q8_K's scale overflow), ties at scale 1 for Q16. */
enum { KIND_NORMAL, KIND_OUTLIERS, KIND_TIES, KIND_ZEROS, KIND_TINY, KIND_TIES16 };
static void fill_x(float *x, int n, int kind) {
    float scale = 1.0f;
    for (int i = 0; i < n; i++) {
        if (i % 32 == 0) {
            scale = powf(10.0f, -44.0f + 18.0f * (rnd() + 1.0f) / 2.0f);
        }
        switch (kind) {
        case KIND_NORMAL: x[i] = rnd(); break;
        case KIND_OUTLIERS: x[i] = rnd() * (i % 37 == 0 ? 300.0f : 1.0f); break;
        case KIND_TIES: x[i] = i % 32 == 0 ? 127.0f : floorf(rnd() * 120.0f) + 0.5f; break;
        case KIND_TINY: x[i] = rnd() * scale; break;
        case KIND_TIES16: x[i] = i % 32 == 0 ? 32767.0f : floorf(rnd() * 32000.0f) + 0.5f; break;
        default: x[i] = 0.0f; break;
        }
    }
}

static void check_weight_type(int32_t type, int n, int rows) {
    size_t rb;
    if (lb_row_size(type, n, &rb) != LB_OK) {
        report(0, "row size", type);
        return;
    }
    float *src = malloc(sizeof(float) * (size_t)n * rows), *x = malloc(sizeof(float) * n);
    float *wd = malloc(sizeof(float) * (size_t)n * rows), out[2][16];
    void *w = malloc(rb * rows);
    for (int i = 0; i < n * rows; i++) {
        src[i] = rnd() * (1.0f + (float)(i % 5));
    }
    if (lb_quantize_rows(type, src, rows, n, NULL, w, rb * rows, 1) != LB_OK ||
        lb_dequantize(type, w, rb * rows, wd, (int64_t)n * rows) != LB_OK) {
        report(0, "encode weights", type);
        goto done;
    }
    const int is_float = type == LB_TYPE_F32 || type == LB_TYPE_F16 || type == LB_TYPE_BF16;
    for (int kind = KIND_NORMAL; kind <= KIND_ZEROS; kind++) {
        fill_x(x, n, kind);
        const char *paths[2] = {"scalar", "neon"};
        for (int p = 0; p < 2; p++) {
            if (!set_path(paths[p]) || lb_vec_dot(type, n, rows, w, rb * rows, x, out[p]) != LB_OK) {
                report(0, "vec_dot", type);
                goto done;
            }
        }
        int ok = 1;
        for (int r = 0; r < rows; r++) {
            if (is_float) {
                double mag = 0.0;
                for (int i = 0; i < n; i++) {
                    mag += fabs((double)wd[(size_t)r * n + i] * x[i]);
                }
                ok &= fabs((double)out[0][r] - out[1][r]) <= 1e-5 * mag + 1e-30;
            } else {
                ok &= memcmp(&out[0][r], &out[1][r], sizeof(float)) == 0;
            }
        }
        report(ok, is_float ? "vec_dot within 1e-5" : "vec_dot bit for bit", type);
    }
done:
    free(src);
    free(x);
    free(wd);
    free(w);
}

static void check_encoder(int32_t type, int n) {
    size_t rb;
    lb_row_size(type, n, &rb);
    unsigned char *e[2] = {malloc(rb), malloc(rb)};
    float *x = malloc(sizeof(float) * n);
    /* Q8_1's fp16 block sums would overflow on Q16's ties */
    const int last = type == LB_TYPE_Q16 ? KIND_TIES16 : KIND_TINY;
    for (int kind = KIND_NORMAL; kind <= last; kind++) {
        fill_x(x, n, kind);
        const char *paths[2] = {"scalar", "neon"};
        int ok = 1;
        for (int p = 0; p < 2; p++) {
            ok &= set_path(paths[p]) && lb_quantize(type, x, n, e[p], rb) == LB_OK;
        }
        report(ok && memcmp(e[0], e[1], rb) == 0, "encoder bytes", type);
    }
    free(e[0]);
    free(e[1]);
    free(x);
}

/* The attention entries of the NEON table against the references they stand for. */
static void check_attention(void) {
    enum { HD = 64, KEYS = 37 };
    float q[HD], o[2][HD], s[2][KEYS];
    uint16_t k16[HD];
    for (int i = 0; i < HD; i++) {
        q[i] = rnd();
        k16[i] = (uint16_t)(0x3000 + (int)((rnd() + 1.0f) * 2000.0f)); /* fp16 values near 0.1..2 */
        o[0][i] = o[1][i] = rnd();
    }
    const lb_kernels *k = &lb_kernels_neon;
    const float d0 = lb_attn_dot_ref(HD, q, k16), d1 = k->attn_dot(HD, q, k16);
    report(memcmp(&d0, &d1, sizeof d0) == 0, "attn_dot bit for bit", HD);
    lb_attn_axpy_ref(HD, 0.37f, k16, o[0]);
    k->attn_axpy(HD, 0.37f, k16, o[1]);
    report(memcmp(o[0], o[1], sizeof o[0]) == 0, "attn_axpy bit for bit", HD);

    /* Q8_0 cache: the encoded query against KEYS key rows of 2 heads' width */
    lb_block_q8_0 qq[HD / 32], keys[KEYS][2 * HD / 32];
    float xk[2 * HD];
    lb_quantize_row_q8_0_ref(q, qq, HD);
    for (int p = 0; p < KEYS; p++) {
        for (int i = 0; i < 2 * HD; i++) {
            xk[i] = rnd() * (float)(1 + p % 3);
        }
        lb_quantize_row_q8_0_ref(xk, keys[p], 2 * HD);
    }
    for (int p = 0; p < KEYS; p++) {
        lb_vec_dot_q8_0_q8_0(HD, &s[0][p], qq, keys[p]);
    }
    k->attn_scores_q8_0(HD, KEYS, qq, keys, sizeof keys[0], s[1]);
    report(memcmp(s[0], s[1], sizeof s[0]) == 0, "attn_scores_q8_0 bit for bit", KEYS);
}

int main(void) {
    if (!set_path("neon")) {
        puts("the NEON path is not available: no dot-product extension reported");
        return 2;
    }
    const int32_t weights[] = {LB_TYPE_F32,  LB_TYPE_F16,  LB_TYPE_BF16, LB_TYPE_Q4_0, LB_TYPE_Q4_1,
                               LB_TYPE_Q5_0, LB_TYPE_Q5_1, LB_TYPE_Q8_0, LB_TYPE_Q2_K, LB_TYPE_Q3_K,
                               LB_TYPE_Q4_K, LB_TYPE_Q5_K, LB_TYPE_Q6_K, LB_TYPE_IQ4_NL};
    for (size_t i = 0; i < sizeof weights / sizeof weights[0]; i++) {
        check_weight_type(weights[i], 1024, 9); /* 9 rows: not a multiple of 8 */
    }
    const int32_t acts[] = {LB_TYPE_Q8_0, LB_TYPE_Q8_1, LB_TYPE_Q8_K, LB_TYPE_Q16};
    for (size_t i = 0; i < sizeof acts / sizeof acts[0]; i++) {
        check_encoder(acts[i], 1024);
    }
    check_attention();
    printf("%s: %u failed\n", g_failures ? "FAIL" : "OK", g_failures);
    return g_failures ? 1 : 0;
}
