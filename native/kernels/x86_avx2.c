/*
 * The AVX2 path (with FMA and F16C), for x86-64 CPUs from about 2013 on.
 * This file is compiled for that target whatever the build flags say;
 * dispatch.c selects it only on a CPU (and OS) that supports it.
 */
#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__) || defined(_M_IX86)

#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif

#include "x86_simd.h"

const lb_kernels lb_kernels_avx2 = {.name = "avx2", LB_X86_TABLE_BODY};

#if defined(__clang__)
#pragma clang attribute pop
#elif defined(__GNUC__)
#pragma GCC pop_options
#endif

#else
typedef int lb_x86_avx2_unused; /* ISO C wants something in every file */
#endif
