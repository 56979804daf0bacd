// The CPU's cache sizes, read once at run time (glibc's sysconf, else Linux's sysfs, else a
// common desktop core's), from which the GEMM derives its block sizes (gemm.cpp).
#pragma once

#include <cstdint>

namespace minillm {

struct CacheSizes {
    std::int64_t l1d, l2, l3;   // bytes: per core for L1d and L2, the whole shared L3
};

const CacheSizes& caches();   // cpu.cpp

}  // namespace minillm
