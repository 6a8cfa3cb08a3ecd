// The CPU buffer cache: large CPU tensors of the jet kernels reuse freed memory instead of fresh pages.
//
// A training step allocates the same big jet stacks ([K, N, F], 16 MB at K = 4, N = 4096, F = 256) every step.
// glibc serves such sizes from fresh mmap'd or top-of-heap pages and returns them to the kernel when they are
// freed, so every step page-faults (and the kernel zeroes) each of them again: about 0.4 us per 4 KiB page on the
// 2-core test VM, 10% of an MLP 4x256 jet step. Like torch's CUDA caching allocator, this one keeps freed blocks
// of at least 1 MiB, up to a byte limit (SOAP_KERNELS_CPU_CACHE_MB, default 1024; the blocks unused longest are
// freed to make room), and hands them out again for requests of the same size (up to 1/8 larger). Smaller
// requests go to torch's CPU allocator. Not fork-aware: a child forked while another thread holds the cache's
// lock would block on it (torch's own allocators share that caveat). Blocks come from c10::alloc_cpu directly,
// so torch's memory profiler does not see them.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace soap_kernels {

// An uninitialised contiguous CPU tensor whose storage comes from the cache when it is large.
at::Tensor cpu_cached_empty(c10::IntArrayRef sizes, c10::ScalarType dtype);

struct CpuBufferCacheStats {
  int64_t limit_bytes;     // the most bytes kept while unused
  int64_t cached_bytes;    // bytes kept now, unused
  int64_t cached_blocks;
  int64_t hits;            // requests served from kept blocks
  int64_t misses;          // requests that allocated fresh memory
};

CpuBufferCacheStats cpu_buffer_cache_stats();
// Frees every kept block (memory in use is returned to the cache as usual when its tensors die).
void cpu_buffer_cache_clear();
// Sets the byte limit (0 turns caching off) and frees kept blocks beyond it.
void cpu_buffer_cache_set_limit(int64_t bytes);
// Debugging: when on, every tensor cpu_cached_empty returns is filled with 0xFF bytes (NaN in float32 and
// float64), so an element a kernel leaves unwritten shows up as NaN.
void cpu_buffer_cache_set_debug_fill(bool enabled);

}  // namespace soap_kernels
