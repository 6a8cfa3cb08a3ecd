// The CPU buffer cache (csrc/include/soap_kernels/cpu_buffer_cache.h): a c10::Allocator that keeps freed large
// blocks for reuse, the op soap_kernels::cached_empty, and the cache's controls.
#include "soap_kernels/cpu_buffer_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <torch/library.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <cstdint>
#include <cstdlib>
#include <limits>
#include <map>
#include <memory>
#include <mutex>

namespace soap_kernels {
namespace {

// Below this, glibc's heap already reuses freed memory (no fresh pages), so torch's allocator serves it.
constexpr size_t kCachedBytesMin = size_t{1} << 20;
constexpr size_t kPageBytes = 4096;
constexpr int64_t kDefaultLimitMiB = 1024;

int64_t limit_from_environment() {
  const char* text = std::getenv("SOAP_KERNELS_CPU_CACHE_MB");
  if (text == nullptr || *text == '\0') return kDefaultLimitMiB << 20;
  char* end = nullptr;
  errno = 0;
  const long long mib = std::strtoll(text, &end, 10);
  TORCH_CHECK(end != text && *end == '\0' && errno == 0 && mib >= 0 &&
                  mib <= (std::numeric_limits<int64_t>::max() >> 20),
              "SOAP_KERNELS_CPU_CACHE_MB must be a non-negative integer (MiB kept for reuse; 0 turns the jet "
              "kernels' CPU buffer cache off), got '", text, "'");
  return static_cast<int64_t>(mib) << 20;
}

class CpuBufferCache final : public c10::Allocator {
  struct Block {
    void* data;
    size_t size;
  };
  struct Kept {
    void* data;
    uint64_t last_freed;  // a counter: the smallest is the block kept longest without reuse
  };

 public:
  CpuBufferCache() : limit_bytes_(limit_from_environment()) {}

  c10::DataPtr allocate(size_t nbytes) override {
    if (nbytes < kCachedBytesMin) {
      c10::DataPtr small = c10::GetCPUAllocator()->allocate(nbytes);
      if (debug_fill_.load(std::memory_order_relaxed) && nbytes > 0) std::memset(small.get(), 0xFF, nbytes);
      return small;
    }
    const size_t size = (nbytes + kPageBytes - 1) / kPageBytes * kPageBytes;
    auto block = std::make_unique<Block>();  // before taking memory, so a failure here leaks nothing
    *block = take(size);
    if (block->data == nullptr) {
      *block = {c10::alloc_cpu(size), size};  // throws c10::OutOfMemoryError when the machine has none left
    }
    void* data = block->data;
    if (debug_fill_.load(std::memory_order_relaxed)) std::memset(data, 0xFF, size);
    return {data, block.release(), &CpuBufferCache::release, c10::Device(c10::DeviceType::CPU)};
  }

  void set_debug_fill(bool enabled) { debug_fill_.store(enabled, std::memory_order_relaxed); }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  CpuBufferCacheStats stats() {
    std::lock_guard<std::mutex> lock(mutex_);
    return {limit_bytes_, cached_bytes_, static_cast<int64_t>(free_blocks_.size()), hits_, misses_};
  }

  void set_limit(int64_t bytes) {
    TORCH_CHECK(bytes >= 0, "soap_kernels: the CPU buffer cache limit must be >= 0 bytes, got ", bytes);
    std::lock_guard<std::mutex> lock(mutex_);
    limit_bytes_ = bytes;
    evict_until_fits(0);
  }

  void clear() {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto& [size, kept] : free_blocks_) c10::free_cpu(kept.data);
    free_blocks_.clear();
    cached_bytes_ = 0;
  }

 private:
  // The smallest kept block of at least `size` bytes and at most 1/8 more (so a small request does not pin a
  // much larger block), or {nullptr, 0}.
  Block take(size_t size) {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = free_blocks_.lower_bound(size);
    if (it == free_blocks_.end() || it->first > size + size / 8) {
      ++misses_;
      return {nullptr, 0};
    }
    ++hits_;
    const Block kept{it->second.data, it->first};
    cached_bytes_ -= static_cast<int64_t>(it->first);
    free_blocks_.erase(it);
    return kept;
  }

  // Frees kept blocks, longest unused first, until `incoming` more bytes fit under the limit: after a change of
  // shapes the blocks of the old sizes make room for the new ones instead of pinning the limit for good.
  void evict_until_fits(int64_t incoming) {
    while (!free_blocks_.empty() && cached_bytes_ + incoming > limit_bytes_) {
      auto oldest = free_blocks_.begin();
      for (auto it = free_blocks_.begin(); it != free_blocks_.end(); ++it) {
        if (it->second.last_freed < oldest->second.last_freed) oldest = it;
      }
      cached_bytes_ -= static_cast<int64_t>(oldest->first);
      c10::free_cpu(oldest->second.data);
      free_blocks_.erase(oldest);
    }
  }

  // Runs in a DataPtr deleter (noexcept): never throws; a block that cannot be kept is freed.
  void give_back(Block* block) noexcept {
    const auto size = static_cast<int64_t>(block->size);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (size <= limit_bytes_) {
        evict_until_fits(size);
        try {
          free_blocks_.emplace(block->size, Kept{block->data, ++free_count_});
          cached_bytes_ += size;
          block->data = nullptr;
        } catch (...) {  // no memory for the map node: free the block below instead
        }
      }
    }
    if (block->data != nullptr) c10::free_cpu(block->data);
    delete block;
  }

  static void release(void* context);

  std::mutex mutex_;
  std::multimap<size_t, Kept> free_blocks_;
  int64_t limit_bytes_;
  int64_t cached_bytes_ = 0;
  int64_t hits_ = 0;
  int64_t misses_ = 0;
  uint64_t free_count_ = 0;
  std::atomic<bool> debug_fill_{false};
};

// Never destroyed: tensors can die after static destructors have run (at interpreter exit).
CpuBufferCache& cache() {
  static CpuBufferCache* instance = new CpuBufferCache();
  return *instance;
}

void CpuBufferCache::release(void* context) { cache().give_back(static_cast<Block*>(context)); }

at::Tensor cached_empty_cpu(const at::Tensor& like, c10::IntArrayRef size) {
  return cpu_cached_empty(size, like.scalar_type());
}

}  // namespace

at::Tensor cpu_cached_empty(c10::IntArrayRef sizes, c10::ScalarType dtype) {
  return at::detail::empty_generic(sizes, &cache(), c10::DispatchKeySet(c10::DispatchKey::CPU), dtype,
                                   std::nullopt);
}

CpuBufferCacheStats cpu_buffer_cache_stats() { return cache().stats(); }

void cpu_buffer_cache_clear() { cache().clear(); }

void cpu_buffer_cache_set_limit(int64_t bytes) { cache().set_limit(bytes); }

void cpu_buffer_cache_set_debug_fill(bool enabled) { cache().set_debug_fill(enabled); }

TORCH_LIBRARY_IMPL(soap_kernels, CPU, m) { m.impl("cached_empty", &cached_empty_cpu); }

}  // namespace soap_kernels
