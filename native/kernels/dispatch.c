/*
 * Run-time choice of the kernel path. Every SIMD file is compiled for its own
 * instruction set whatever the build flags are, so this file is the only thing
 * standing between those instructions and a CPU that lacks them: a path is
 * selectable only if the CPU reports its features *and* the operating system
 * saves the vector registers they use (XCR0 on x86).
 *
 * The choice is made once, on first use, from the CPU and the environment
 * variable LOWBIT_ISA; lb_set_isa can change it later. The active table is an
 * atomic pointer to immutable data, so switching is safe while other threads
 * run kernels: they finish with the table they loaded.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)
#define LB_X86 1
#if defined(_MSC_VER)
#include <intrin.h>
#else
#include <cpuid.h>
#endif
#endif

#if defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#ifndef HWCAP_ASIMDDP
#define HWCAP_ASIMDDP (1UL << 20)
#endif
#endif

/* The reference path: every entry NULL, so the traits' kernels serve. */
static const lb_kernels lb_kernels_scalar = {.name = "scalar"};

/* ---- CPU features ---------------------------------------------------------- */

enum { LB_CPU_AVX2 = 1, LB_CPU_AVX512 = 2, LB_CPU_NEON = 4 };

#if defined(LB_X86)
static void lb_cpuid(unsigned leaf, unsigned sub, unsigned r[4]) {
#if defined(_MSC_VER)
    int v[4];
    __cpuidex(v, (int)leaf, (int)sub);
    for (int i = 0; i < 4; i++) {
        r[i] = (unsigned)v[i];
    }
#else
    __cpuid_count(leaf, sub, r[0], r[1], r[2], r[3]);
#endif
}

/* XCR0: which register states the OS saves on a context switch. Only call
 * when cpuid reports OSXSAVE. */
static unsigned long long lb_xgetbv0(void) {
#if defined(_MSC_VER)
    return _xgetbv(0);
#else
    unsigned lo, hi;
    __asm__ __volatile__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
#endif
}
#endif

static int lb_cpu_features(void) {
    int f = 0;
#if defined(LB_X86)
    unsigned r[4];
    lb_cpuid(0, 0, r);
    const unsigned max_leaf = r[0];
    if (max_leaf < 7) {
        return 0;
    }
    lb_cpuid(1, 0, r);
    const int fma = (r[2] >> 12) & 1, osxsave = (r[2] >> 27) & 1, avx = (r[2] >> 28) & 1, f16c = (r[2] >> 29) & 1;
    if (!osxsave || !avx) {
        return 0;
    }
    const unsigned long long xcr0 = lb_xgetbv0();
    const int os_ymm = (xcr0 & 0x6) == 0x6;    /* SSE and AVX state */
    const int os_zmm = (xcr0 & 0xe6) == 0xe6;  /* plus opmask and both halves of zmm0-31 */
    lb_cpuid(7, 0, r);
    const int avx2 = (r[1] >> 5) & 1;
    const int avx512f = (r[1] >> 16) & 1, avx512bw = (r[1] >> 30) & 1, avx512vl = (r[1] >> 31) & 1;
    const int vnni = (r[2] >> 11) & 1;
    if (os_ymm && avx2 && fma && f16c) {
        f |= LB_CPU_AVX2;
        if (os_zmm && avx512f && avx512bw && avx512vl && vnni) {
            f |= LB_CPU_AVX512;
        }
    }
#elif defined(__aarch64__) && defined(__linux__)
    if (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) {
        f |= LB_CPU_NEON;
    }
#elif defined(__aarch64__) && defined(__APPLE__)
    f |= LB_CPU_NEON; /* every Apple arm64 CPU has the dot-product extension */
#endif
    return f;
}

/* ---- the path table -------------------------------------------------------- */

typedef struct lb_path {
    const char *name;
    int needs;                  /* LB_CPU_* bits; 0 for scalar */
    const lb_kernels *kernels;  /* NULL: not built for this CPU family */
} lb_path;

/* Best first. */
static const lb_path lb_paths[] = {
#if defined(LB_X86)
    {"avx512", LB_CPU_AVX512, &lb_kernels_avx512},
    {"avx2", LB_CPU_AVX2, &lb_kernels_avx2},
#else
    {"avx512", LB_CPU_AVX512, NULL},
    {"avx2", LB_CPU_AVX2, NULL},
#endif
#if defined(__aarch64__)
    {"neon", LB_CPU_NEON, &lb_kernels_neon},
#else
    {"neon", LB_CPU_NEON, NULL},
#endif
    {"scalar", 0, &lb_kernels_scalar},
};
#define LB_N_PATHS (sizeof lb_paths / sizeof lb_paths[0])

static atomic_int lb_features = -1; /* -1: not read yet */
static _Atomic(const lb_kernels *) lb_active;

static int lb_features_get(void) {
    int f = atomic_load_explicit(&lb_features, memory_order_relaxed);
    if (f < 0) {
        f = lb_cpu_features(); /* idempotent, so a race only repeats the work */
        atomic_store_explicit(&lb_features, f, memory_order_relaxed);
    }
    return f;
}

static const lb_path *lb_find_path(const char *name) {
    for (size_t i = 0; i < LB_N_PATHS; i++) {
        if (strcmp(lb_paths[i].name, name) == 0) {
            return &lb_paths[i];
        }
    }
    return NULL;
}

static int lb_path_usable(const lb_path *p) {
    return p->kernels != NULL && (lb_features_get() & p->needs) == p->needs;
}

static const lb_kernels *lb_best(void) {
    for (size_t i = 0; i < LB_N_PATHS; i++) {
        if (lb_path_usable(&lb_paths[i])) {
            return lb_paths[i].kernels;
        }
    }
    return &lb_kernels_scalar;
}

/* The first choice: LOWBIT_ISA if the CPU can run it, else the best. */
static const lb_kernels *lb_initial_choice(void) {
    const char *want = getenv("LOWBIT_ISA");
    const lb_kernels *best = lb_best();
    if (want == NULL || want[0] == '\0' || strcmp(want, "auto") == 0) {
        return best;
    }
    const lb_path *p = lb_find_path(want);
    if (p != NULL && lb_path_usable(p)) {
        return p->kernels;
    }
    fprintf(stderr, "lowbit: LOWBIT_ISA=%s %s; using %s\n", want,
            p == NULL ? "is not a known path (scalar, avx2, avx512, neon)" : "is not available on this CPU",
            best->name);
    return best;
}

const lb_kernels *lb_kernels_active(void) {
    const lb_kernels *k = atomic_load_explicit(&lb_active, memory_order_acquire);
    if (k == NULL) {
        const lb_kernels *expected = NULL;
        k = lb_initial_choice();
        /* Keep whatever another thread installed first (a racing first use or
         * an lb_set_isa), so the warning above is the only duplicated effect. */
        if (!atomic_compare_exchange_strong_explicit(&lb_active, &expected, k, memory_order_acq_rel,
                                                     memory_order_acquire)) {
            k = expected;
        }
    }
    return k;
}

lb_vec_dot_fn lb_kernel_vec_dot(const lb_kernels *k, int32_t type) {
    if (type >= 0 && type < LB_TYPE_SLOTS && k->vec_dot[type] != NULL) {
        return k->vec_dot[type];
    }
    return lb_get_type_traits(type)->vec_dot;
}

lb_vec_dot_multi_fn lb_kernel_vec_dot_multi(const lb_kernels *k, int32_t type) {
    return type >= 0 && type < LB_TYPE_SLOTS ? k->vec_dot_multi[type] : NULL;
}

lb_from_float_fn lb_kernel_from_float(const lb_kernels *k, int32_t type) {
    if (type >= 0 && type < LB_TYPE_SLOTS && k->from_float[type] != NULL) {
        return k->from_float[type];
    }
    return lb_get_type_traits(type)->from_float;
}

lb_softmax_fn lb_kernel_softmax(const lb_kernels *k) { return k->softmax ? k->softmax : lb_softmax_ref; }

lb_swiglu_fn lb_kernel_swiglu(const lb_kernels *k) { return k->swiglu ? k->swiglu : lb_swiglu_ref; }

lb_gemm_x8_fn lb_kernel_gemm_x8(const lb_kernels *k, int32_t type) {
    if (type >= 0 && type < LB_TYPE_SLOTS && k->gemm_x8[type] != NULL) {
        return k->gemm_x8[type];
    }
    switch (type) {
    case LB_TYPE_Q4_0: return lb_gemm_x8_q4_0_ref;
    case LB_TYPE_Q4_1: return lb_gemm_x8_q4_1_ref;
    case LB_TYPE_Q5_0: return lb_gemm_x8_q5_0_ref;
    case LB_TYPE_IQ4_NL: return lb_gemm_x8_iq4_nl_ref;
    case LB_TYPE_Q8_0: return lb_gemm_x8_q8_0_ref;
    default: return NULL;
    }
}

/* ---- public API ------------------------------------------------------------- */

const char *lb_isa(void) { return lb_kernels_active()->name; }

lb_status lb_set_isa(const char *name) {
    lb_clear_error();
    if (name == NULL || name[0] == '\0' || strcmp(name, "auto") == 0) {
        atomic_store_explicit(&lb_active, lb_best(), memory_order_release);
        return LB_OK;
    }
    const lb_path *p = lb_find_path(name);
    if (p == NULL) {
        return lb_fail(LB_ERR_INVALID_ARGUMENT, "lb_set_isa: unknown path \"%.32s\" (auto, scalar, avx2, avx512, neon)",
                       name);
    }
    if (!lb_path_usable(p)) {
        return lb_fail(LB_ERR_UNSUPPORTED, "lb_set_isa: %s is not available on this CPU (in use: %s)", p->name,
                       lb_kernels_active()->name);
    }
    atomic_store_explicit(&lb_active, p->kernels, memory_order_release);
    return LB_OK;
}
