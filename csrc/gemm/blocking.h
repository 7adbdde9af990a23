// The packed GEMM's cache blocking (KC, MC, NC) chosen at run time: the CPU's caches as found on
// this machine, the blocks derived from them, and the table of the blocking each ISA and element
// size runs with, which the Python side may set (a tuned file, a test). The register tile (MR x
// NR, gemm/tile.h) stays compile-time: it is the micro-kernel's shape.
//
// Compiled once, for the baseline ISA (gemm_blocking.cpp), not per ISA: the kernels of every ISA
// only read the table.
#pragma once

#include <cstdint>

namespace pyconv {

// The data caches the GEMM blocks for, in bytes; *_shared_by: logical CPUs sharing one cache.
// A field the source did not give is 0 (l1d_ways, line) or 1 (*_shared_by).
struct CpuCaches {
    int64_t l1d, l1d_ways, l2, l2_shared_by, l3, l3_shared_by, line, cpus;
    const char* source;  // "sysfs", "cpuid", "compiled-in"; "+PYCONV_CACHE_SIZES" when overridden
};

// cpu0's caches read from `cpu_dir` (normally /sys/devices/system/cpu), falling back to CPUID
// (leaf 4, or AMD's 0x8000001D), then to the sizes the compile-time blocks were tuned for; then
// `override_spec` ("l1d=48K,l2=2M,l3=32M", any of l1d, l1d_ways, l2, l2_shared_by, l3,
// l3_shared_by, line, cpus; nullptr or "" for none) replaces the fields it names. A malformed
// override is ignored and reported by `override_ok`.
CpuCaches detect_cpu_caches(const char* cpu_dir, const char* override_spec, bool* override_ok);

// This machine's caches: detect_cpu_caches on sysfs and PYCONV_CACHE_SIZES, once.
const CpuCaches& cpu_caches();

struct GemmBlocking {
    int64_t kc, mc, nc;
};

// Bound on KC: a reduction block's per-element bookkeeping lives on the stack (conv/im2col.h).
constexpr int64_t kGemmMaxKC = 1024;

// At least this many reduction steps per block (while the KC x NR sliver of B fits in half of
// L2): each block of a tile loads and stores its MR x NR tile of C once, which misses L1 and L2
// when C is larger than they are, so a short block pays it for little arithmetic. On a Zen 5
// core (48 KiB L1d, 1 MiB L2; AVX-512 float, MR 8, NR 48) the L1 rule gives 200, and KC 512 ran
// 1.11-1.19x KC 200 at 1000^3, 1024^3 and 2048^3 on one thread (medians of interleaved rounds,
// every round faster), 1.01-1.08x at 512^3 and the models' shapes. The B sliver (96 KiB) then streams from L2: the
// micro-kernel reads 192 bytes of it per 24 multiply-adds.
constexpr int64_t kGemmMinModelKC = 512;

// KC, MC, NC for a micro-kernel of MR x NR elements of `elem_size` bytes, after BLIS's analytical
// model (Low et al., "Analytical modeling is enough for high-performance BLIS", 2016):
//   KC: one MR x KC sliver of A and one KC x NR sliver of B fill L1 but one way of it (the
//       B sliver is reused for every A sliver of the block; the spare way holds C's tile), but
//       at least kGemmMinModelKC while the B sliver fits in half of L2;
//   MC: the MC x KC block of A fills half of the L2 (the rest holds the B sliver streaming in
//       from L3 and the C tiles);
//   NC: the KC x NC panel of B fills half of this core's share of the L3.
// Rounded down to whole MR / NR panels (KC to a multiple of 8) and bounded.
GemmBlocking model_gemm_blocking(const CpuCaches& caches, int mr, int nr, int elem_size);

// `b` made usable by a micro-kernel of MR x NR: KC in [1, kGemmMaxKC], MC and NC rounded to
// the nearest whole MR / NR panels (at least one).
GemmBlocking round_gemm_blocking(GemmBlocking b, int mr, int nr);

// The blocking the packed GEMM of ISA level `isa` (0 generic, 1 AVX2, 2 AVX-512) and elements
// of `elem_size` bytes runs with. Until set_gemm_blocking, it is PYCONV_GEMM_BLOCKING ("kc,mc,nc")
// when given, else model_gemm_blocking on cpu_caches(), else (no cache found) the compile-time
// blocks. Thread-safe; the kernels read it once per call.
GemmBlocking gemm_blocking(int isa, int elem_size);
// Where gemm_blocking's answer comes from: "model", "PYCONV_GEMM_BLOCKING", "compile-time
// default", or the source given to set_gemm_blocking. A malformed PYCONV_GEMM_BLOCKING adds
// " (PYCONV_GEMM_BLOCKING malformed, ignored)".
const char* gemm_blocking_source(int isa, int elem_size);
// Replaces the blocking (rounded by round_gemm_blocking); `source` must outlive the program
// (a string literal). Returns the blocking stored.
GemmBlocking set_gemm_blocking(int isa, int elem_size, GemmBlocking b, const char* source);
// Back to the blocking of the environment, the model or the compile-time default.
void reset_gemm_blocking();

}  // namespace pyconv
