/*
 * The AVX-512 path: AVX-512 F/BW/VL with VNNI (Ice Lake, Zen 4 and later).
 * The kernels are those of x86_simd.h on 256-bit vectors, with the int8 dot
 * products as VNNI instructions (vpdpbusd, vpdpwssd) and 32 vector registers
 * for the multi-row tiles. Compiled for that target whatever the build flags
 * say; dispatch.c selects it only on a CPU (and OS) that supports it.
 */
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)

#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni"))), \
                             apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")
#endif

#define LB_X86_VNNI 1
#include "x86_simd.h"

const lb_kernels lb_kernels_avx512 = {.name = "avx512", LB_X86_TABLE_BODY};

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#else
typedef int lb_x86_avx512_unused; /* ISO C wants something in every file */
#endif
