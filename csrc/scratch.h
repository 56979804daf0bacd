// Scratch memory for the kernels' packed panels: per thread and per slot, 64-byte aligned, grown on
// demand and kept for the next call. A GEMM packs megabytes per call; allocating them fresh would
// cost a page fault per 4 KiB and zeroing them a pass over memory, every call.
#pragma once

#include <cstdint>
#include <cstdlib>
#include <memory>

namespace minillm {

enum class Slot : int { gemm_b = 0, gemm_a = 1, quant_w = 2, quant_x = 3, quant_x_u8 = 4, count = 5 };

// At least n uninitialised T's on a 64-byte boundary, owned by this thread's `slot` until its next
// call with the same slot. Never shared between threads unless the caller shares the pointer.
template <typename T>
T* scratch(Slot slot, std::int64_t n) {
    struct Block {
        std::unique_ptr<unsigned char, decltype(&std::free)> data{nullptr, &std::free};
        std::size_t bytes = 0;
    };
    thread_local Block blocks[int(Slot::count)];
    Block& b = blocks[int(slot)];
    const std::size_t want = (static_cast<std::size_t>(n) * sizeof(T) + 63) / 64 * 64;
    if (want > b.bytes) {
        void* p = std::aligned_alloc(64, want);
        if (!p) throw std::bad_alloc();
        b.data.reset(static_cast<unsigned char*>(p));
        b.bytes = want;
    }
    return reinterpret_cast<T*>(b.data.get());
}

}  // namespace minillm
