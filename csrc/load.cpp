// How many threads a parallel region uses now: the user's count (set_num_threads, OMP_NUM_THREADS),
// or fewer while other programs keep the CPUs busy, so that a region never waits at its barrier for
// a thread the OS has descheduled to run someone else (on 2 cores, one competing process made the
// default training recipe 80x slower with 2 threads).
//
// Every 50 ms, the first kernel to ask reads how many threads are runnable on the whole machine
// (the 4th field of /proc/loadavg, "running/total") and how many of them are this process's own
// (state R in /proc/self/task/*/stat); the others, smoothed over the last few samples, take that
// many CPUs, and the kernels use the rest (at least one). The results do not depend on the thread
// count (every kernel splits its work the same way for any count), so adapting never changes them.
// Linux only; elsewhere, and with MINILLM_ADAPTIVE_THREADS=0 or set_adaptive_threads(False), the
// user's count is used as is. Bindings: in cpu.cpp.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "parallel.h"

#if defined(__linux__)
#include <dirent.h>
#include <sched.h>
#endif

namespace minillm {

namespace {

constexpr std::int64_t kSampleNs = 50'000'000;   // 50 ms between samples

std::atomic<bool> g_adaptive{[] {
    const char* env = std::getenv("MINILLM_ADAPTIVE_THREADS");
    return !(env && std::strcmp(env, "0") == 0);
}()};
std::atomic<std::int64_t> g_next_sample{0};
std::atomic<int> g_others_x16{0};   // smoothed count of other programs' runnable threads, times 16
std::atomic<int> g_last_running{-1}, g_last_ours{-1};

std::int64_t now_ns() {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
        .count();
}

#if defined(__linux__)
// The "running" count of /proc/loadavg ("0.52 0.58 0.59 3/489 12345" -> 3), or -1.
int runnable_on_machine() {
    FILE* f = std::fopen("/proc/loadavg", "r");
    if (!f) return -1;
    double a, b, c;
    int running = -1, total = 0;
    if (std::fscanf(f, "%lf %lf %lf %d/%d", &a, &b, &c, &running, &total) != 5) running = -1;
    std::fclose(f);
    return running;
}

// How many of this process's threads are runnable (state R), or -1.
int runnable_here() {
    DIR* dir = opendir("/proc/self/task");
    if (!dir) return -1;
    int count = 0;
    char path[64], buf[512];
    while (const dirent* e = readdir(dir)) {
        if (e->d_name[0] == '.') continue;
        std::snprintf(path, sizeof path, "/proc/self/task/%.20s/stat", e->d_name);
        FILE* f = std::fopen(path, "r");
        if (!f) continue;
        const std::size_t n = std::fread(buf, 1, sizeof buf - 1, f);
        std::fclose(f);
        buf[n] = 0;
        const char* close = std::strrchr(buf, ')');   // "tid (name) S ...": the name may hold spaces
        if (close && close[1] == ' ' && close[2] == 'R') ++count;
    }
    closedir(dir);
    return count;
}
#endif

}  // namespace

int cpus_available() {
#if defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof set, &set) == 0) return CPU_COUNT(&set);
#endif
    return 1;
}

void sample_load() {
#if defined(__linux__)
    const int running = runnable_on_machine(), ours = runnable_here();
    g_last_running.store(running, std::memory_order_relaxed);
    g_last_ours.store(ours, std::memory_order_relaxed);
    if (running < 0 || ours < 0) return;
    const int others = std::max(0, running - ours);
    // smoothing: the new sample counts for a half, so one burst of a short-lived task moves nothing
    const int old = g_others_x16.load(std::memory_order_relaxed);
    g_others_x16.store((old + 16 * others) / 2, std::memory_order_relaxed);
#endif
}

int kernel_threads() {
    int user = 1;
#if defined(MINILLM_OPENMP)
    user = omp_get_max_threads();
#endif
    if (user <= 1 || !g_adaptive.load(std::memory_order_relaxed)) return user;
    const std::int64_t now = now_ns();
    std::int64_t next = g_next_sample.load(std::memory_order_relaxed);
    if (now >= next && g_next_sample.compare_exchange_strong(next, now + kSampleNs)) sample_load();
    static const int cpus = cpus_available();
    const int others = (g_others_x16.load(std::memory_order_relaxed) + 8) / 16;   // rounded
    return std::max(1, std::min(user, cpus - others));
}

void set_adaptive_threads(bool on) {
    g_adaptive.store(on, std::memory_order_relaxed);
    g_others_x16.store(0, std::memory_order_relaxed);
    g_next_sample.store(0, std::memory_order_relaxed);
}

bool adaptive_threads() { return g_adaptive.load(std::memory_order_relaxed); }

LoadSample last_load_sample() {
    return {g_last_running.load(std::memory_order_relaxed), g_last_ours.load(std::memory_order_relaxed),
            (g_others_x16.load(std::memory_order_relaxed) + 8) / 16, cpus_available()};
}

}  // namespace minillm
