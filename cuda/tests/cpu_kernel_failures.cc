// Failure injection for the CPU kernels (cuda/cpu/attention.cc), run by
// tests/test_cpu_memory_failures.py (compiled with the host compiler). One mode per run:
//   thread  a worker thread cannot start (pthread_create fails, as std::thread reports with
//           std::system_error): the kernel must run on the threads it has, with the same result;
//   task    every allocation of the per-task score buffer fails, on every thread (std::bad_alloc
//           inside the tasks): the kernel must throw std::bad_alloc to its caller once every
//           thread has joined, not end the process in std::terminate.
// Prints "ok" and exits 0 when the kernel behaves; "skip" when this machine runs one thread.
#include <dlfcn.h>
#include <pthread.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "../cpu/attention.h"

namespace {

bool fail_thread_start = false;
size_t fail_allocations_of = 0;  // bytes; 0: none fails

constexpr int kTokens = 4096, kDim = 16, kWindow = kTokens - 1;

}  // namespace

// Interposes libc's: std::thread starts its threads here.
extern "C" int pthread_create(pthread_t* thread, const pthread_attr_t* attr, void* (*start)(void*),
                              void* arg) {
  using Create = int (*)(pthread_t*, const pthread_attr_t*, void* (*)(void*), void*);
  static const Create create = reinterpret_cast<Create>(dlsym(RTLD_NEXT, "pthread_create"));
  if (fail_thread_start) return EAGAIN;
  return create(thread, attr, start, arg);
}

void* operator new(size_t size) {
  if (size != fail_allocations_of || size == 0)
    if (void* p = std::malloc(size ? size : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string mode = argv[1];
  if (std::thread::hardware_concurrency() < 2) {
    std::printf("skip\n");
    return 0;
  }
  // 1-D, one head, a window of the whole axis: heavy enough for every thread the machine has.
  gna::Problem p;
  p.rank = 1;
  p.extent[0] = kTokens;
  p.kernel_size[0] = kWindow;
  p.heads = p.kv_heads = 1;
  p.head_dim = p.head_dim_v = kDim;
  p.scale = 0.25f;
  std::vector<float> x(size_t(kTokens) * kDim), want(x.size()), got(x.size());
  std::vector<float> lse(kTokens);
  uint32_t state = 1;
  for (float& e : x) e = float((state = state * 1664525u + 1013904223u) >> 8) / float(1 << 24);
  gna::cpu::forward(p, x.data(), x.data(), x.data(), want.data(), lse.data());

  try {
    if (mode == "thread") {
      fail_thread_start = true;
      gna::cpu::forward(p, x.data(), x.data(), x.data(), got.data(), lse.data());
      fail_thread_start = false;
      if (std::memcmp(got.data(), want.data(), got.size() * sizeof(float)) != 0) {
        std::printf("different result on fewer threads\n");
        return 1;
      }
    } else if (mode == "task") {
      fail_allocations_of = kWindow * sizeof(float);  // the per-task score buffer
      gna::cpu::forward(p, x.data(), x.data(), x.data(), got.data(), lse.data());
      fail_allocations_of = 0;
      std::printf("no exception although every task's allocation failed\n");
      return 1;
    } else {
      return 2;
    }
  } catch (const std::bad_alloc&) {
    fail_allocations_of = 0;
    if (mode != "task") {
      std::printf("threw std::bad_alloc\n");
      return 1;
    }
  } catch (const std::exception& e) {
    fail_thread_start = false, fail_allocations_of = 0;
    std::printf("threw %s\n", e.what());
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
