#include "attention.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <exception>
#include <limits>
#include <thread>
#include <vector>

#include "float_convert.h"
#include "gna/window.h"

namespace gna::cpu {
namespace {

// ---------------------------------------------------------------------------------------------
// dtype handling: widen inputs to fp32 once, narrow results once.

// An fp32 view of a tensor: the tensor itself when it is fp32, else a widened copy.
class Fp32Tensor {
 public:
  Fp32Tensor(const void* data, DType dtype, size_t count) {
    if (dtype == DType::kF32) {
      data_ = static_cast<const float*>(data);
      return;
    }
    storage_.resize(count);
    const auto* half = static_cast<const uint16_t*>(data);
    for (size_t i = 0; i < count; ++i)
      storage_[i] = dtype == DType::kBF16 ? bf16_to_float(half[i]) : fp16_to_float(half[i]);
    data_ = storage_.data();
  }
  const float* data() const { return data_; }

 private:
  std::vector<float> storage_;
  const float* data_ = nullptr;
};

void narrow(const float* src, DType dtype, size_t count, void* dst) {
  if (dtype == DType::kF32) {
    std::copy(src, src + count, static_cast<float*>(dst));
    return;
  }
  auto* half = static_cast<uint16_t*>(dst);
  for (size_t i = 0; i < count; ++i)
    half[i] = dtype == DType::kBF16 ? float_to_bf16(src[i]) : float_to_fp16(src[i]);
}

// ---------------------------------------------------------------------------------------------
// Geometry: the box of keys a query visits.

// Keys along axis a are first[a] + n * step[a] for n < count[a] (full-axis coordinates).
struct KeyBox {
  int first[kMaxRank];
  int step[kMaxRank];
  int count[kMaxRank];
  int64_t size() const { return int64_t{count[0]} * count[1] * count[2]; }
};

// Row-major token strides of the spatial axes (unused axes have extent 1).
// `keys`: the grid of the k/v arrays, else that of q/out/lse (they differ in a view).
struct TokenGrid {
  int64_t stride[kMaxRank];
  TokenGrid(const Problem& p, bool keys) {
    int extent[kMaxRank];
    for (int a = 0; a < kMaxRank; ++a) extent[a] = keys ? p.kv_length(a) : p.q_length(a);
    stride[2] = 1;
    stride[1] = extent[2];
    stride[0] = int64_t{extent[1]} * extent[2];
  }
  void coords(int64_t token, int* c) const {
    for (int a = 0; a < kMaxRank; ++a) {
      c[a] = static_cast<int>(token / stride[a]);
      token %= stride[a];
    }
  }
};

// The keys (local positions of the key slice) of the local query at `query`; an empty box
// (size 0) for a padding query or a window that misses the key slice.
KeyBox key_box(const Problem& p, const int* query) {
  KeyBox box;
  for (int a = 0; a < kMaxRank; ++a) {
    if (a >= p.rank) {
      box.first[a] = 0, box.step[a] = 1, box.count[a] = 1;
      continue;
    }
    const ViewKeys keys = view_keys(p.axis(a), p.view(a), query[a]);
    box.first[a] = keys.key_first;
    box.step[a] = p.dilation[a];
    box.count[a] = keys.count;
  }
  return box;
}

// Calls fn(n, key_token) for the n-th key of the box, in row-major order.
template <typename Fn>
void for_each_key(const TokenGrid& grid, const KeyBox& box, Fn&& fn) {
  int64_t n = 0;
  for (int i0 = 0; i0 < box.count[0]; ++i0) {
    const int64_t t0 = (box.first[0] + int64_t{i0} * box.step[0]) * grid.stride[0];
    for (int i1 = 0; i1 < box.count[1]; ++i1) {
      const int64_t t1 = t0 + (box.first[1] + int64_t{i1} * box.step[1]) * grid.stride[1];
      for (int i2 = 0; i2 < box.count[2]; ++i2)
        fn(n++, t1 + box.first[2] + int64_t{i2} * box.step[2]);
    }
  }
}

// At most kernel_size keys along an axis, and no more than the key slice holds (a view's
// window may be far longer than its slice), so the product stays below the key count.
int64_t max_box_size(const Problem& p) {
  int64_t n = 1;
  for (int a = 0; a < p.rank; ++a) n *= std::min(p.kernel_size[a], p.kv_length(a));
  return n;
}

float dot(const float* a, const float* b, int n) {
  float s = 0.f;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void axpy(float alpha, const float* x, float* y, int n) {
  for (int i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// ---------------------------------------------------------------------------------------------
// Threads: tasks are independent; small problems run inline (thread start-up costs more).
// No exception escapes a thread (that would end the process in std::terminate): the first one
// a task throws stops the tasks not yet started and is rethrown here once every thread has
// joined. A thread that cannot be started leaves its share to the others.

template <typename Fn>
void parallel_for(int64_t tasks, double work_per_task, Fn&& fn) {
  constexpr double kMinWorkPerThread = 1 << 18;
  const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
  // In double: an estimate, which must not overflow for any problem.
  const double by_work =
      std::max(1.0, static_cast<double>(tasks) * work_per_task / kMinWorkPerThread);
  const int threads = static_cast<int>(std::min(static_cast<double>(std::min(hw, tasks)), by_work));
  if (threads <= 1) {
    for (int64_t t = 0; t < tasks; ++t) fn(t);
    return;
  }
  std::atomic<int64_t> next{0};
  std::atomic<bool> failed{false};
  std::exception_ptr failure;  // written once, by the first task to throw; read after join
  auto worker = [&]() noexcept {
    try {
      for (int64_t t = next++; t < tasks; t = next++) fn(t);
    } catch (...) {
      if (!failed.exchange(true)) failure = std::current_exception();
      next = tasks;
    }
  };
  std::vector<std::thread> pool;
  for (int i = 1; i < threads; ++i) {
    try {
      pool.emplace_back(worker);
    } catch (...) {  // std::system_error (no thread) or std::bad_alloc (no slot): run with fewer
      break;
    }
  }
  worker();
  for (auto& th : pool) th.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace

void forward(const Problem& p, const void* q_raw, const void* k_raw, const void* v_raw,
             void* out_raw, float* lse) {
  const int64_t tokens = p.tokens(), kv_tokens = p.kv_tokens();
  const int H = p.heads, Hkv = p.kv_heads, D = p.head_dim, Dv = p.head_dim_v;
  const int group = H / Hkv;
  const Fp32Tensor q(q_raw, p.dtype, p.batch * tokens * H * D);
  const Fp32Tensor k(k_raw, p.dtype, p.batch * kv_tokens * Hkv * D);
  const Fp32Tensor v(v_raw, p.dtype, p.batch * kv_tokens * Hkv * Dv);
  std::vector<float> out(p.batch * tokens * H * Dv);
  const TokenGrid grid(p, false), kv_grid(p, true);
  const int64_t window = max_box_size(p);

  // One task = one (batch, head) pair and a chunk of query tokens.
  constexpr int64_t kChunk = 256;
  const int64_t chunks = (tokens + kChunk - 1) / kChunk;
  parallel_for(p.batch * H * chunks, double(kChunk) * window * (D + Dv), [&](int64_t task) {
    const int64_t chunk = task % chunks;
    const int h = static_cast<int>(task / chunks % H);
    const int64_t b = task / chunks / H;
    const int hk = h / group;
    std::vector<float> scores(window);
    std::vector<float> acc(Dv);
    for (int64_t t = chunk * kChunk; t < std::min(tokens, (chunk + 1) * kChunk); ++t) {
      int coord[kMaxRank];
      grid.coords(t, coord);
      const KeyBox box = key_box(p, coord);
      float* out_row = out.data() + ((b * tokens + t) * H + h) * Dv;
      if (box.size() == 0) {  // no visible key (views only): an empty softmax
        std::fill(out_row, out_row + Dv, 0.f);
        lse[(b * tokens + t) * H + h] = -std::numeric_limits<float>::infinity();
        continue;
      }
      const float* q_row = q.data() + ((b * tokens + t) * H + h) * D;
      float max_score = -std::numeric_limits<float>::infinity();
      for_each_key(kv_grid, box, [&](int64_t n, int64_t key) {
        const float* k_row = k.data() + ((b * kv_tokens + key) * Hkv + hk) * D;
        scores[n] = p.scale * dot(q_row, k_row, D);
        max_score = std::max(max_score, scores[n]);
      });
      float sum = 0.f;
      std::fill(acc.begin(), acc.end(), 0.f);
      for_each_key(kv_grid, box, [&](int64_t n, int64_t key) {
        const float weight = std::exp(scores[n] - max_score);
        sum += weight;
        axpy(weight, v.data() + ((b * kv_tokens + key) * Hkv + hk) * Dv, acc.data(), Dv);
      });
      for (int e = 0; e < Dv; ++e) out_row[e] = acc[e] / sum;
      lse[(b * tokens + t) * H + h] = max_score + std::log(sum);
    }
  });
  narrow(out.data(), p.dtype, out.size(), out_raw);
}

void backward(const Problem& p, const void* dout_raw, const void* q_raw, const void* k_raw,
              const void* v_raw, const void* out_raw, const float* lse, const float* dlse,
              void* dq_raw, void* dk_raw, void* dv_raw) {
  const int64_t tokens = p.tokens(), kv_tokens = p.kv_tokens();
  const int H = p.heads, Hkv = p.kv_heads, D = p.head_dim, Dv = p.head_dim_v;
  const int group = H / Hkv;
  const Fp32Tensor dout(dout_raw, p.dtype, p.batch * tokens * H * Dv);
  const Fp32Tensor q(q_raw, p.dtype, p.batch * tokens * H * D);
  const Fp32Tensor k(k_raw, p.dtype, p.batch * kv_tokens * Hkv * D);
  const Fp32Tensor v(v_raw, p.dtype, p.batch * kv_tokens * Hkv * Dv);
  const Fp32Tensor out(out_raw, p.dtype, p.batch * tokens * H * Dv);
  std::vector<float> dq(p.batch * tokens * H * D, 0.f);
  std::vector<float> dk(p.batch * kv_tokens * Hkv * D, 0.f);
  std::vector<float> dv(p.batch * kv_tokens * Hkv * Dv, 0.f);
  const TokenGrid grid(p, false), kv_grid(p, true);
  const int64_t window = max_box_size(p);

  // One task = one (batch, kv head): it owns that slice of dk/dv and the dq of the query heads
  // in its group, so tasks never write the same element.
  parallel_for(p.batch * Hkv, double(tokens) * group * window * 2 * (D + Dv), [&](int64_t task) {
    const int hk = static_cast<int>(task % Hkv);
    const int64_t b = task / Hkv;
    for (int h = hk * group; h < (hk + 1) * group; ++h) {
      for (int64_t t = 0; t < tokens; ++t) {
        int coord[kMaxRank];
        grid.coords(t, coord);
        const KeyBox box = key_box(p, coord);
        if (box.size() == 0) continue;  // no key, no gradient (lse is -inf there)
        const int64_t row = (b * tokens + t) * H + h;
        const float* q_row = q.data() + row * D;
        const float* do_row = dout.data() + row * Dv;
        float* dq_row = dq.data() + row * D;
        // d lse / d score = P, so the lse cotangent enters as a shift of the softmax "delta".
        const float delta = dot(do_row, out.data() + row * Dv, Dv) - dlse[row];
        const float row_lse = lse[row];
        for_each_key(kv_grid, box, [&](int64_t, int64_t key) {
          const int64_t kv_row = (b * kv_tokens + key) * Hkv + hk;
          const float* k_row = k.data() + kv_row * D;
          const float prob = std::exp(p.scale * dot(q_row, k_row, D) - row_lse);
          const float dprob = dot(do_row, v.data() + kv_row * Dv, Dv);
          const float dscore = prob * (dprob - delta) * p.scale;
          axpy(dscore, k_row, dq_row, D);
          axpy(dscore, q_row, dk.data() + kv_row * D, D);
          axpy(prob, do_row, dv.data() + kv_row * Dv, Dv);
        });
      }
    }
  });
  narrow(dq.data(), p.dtype, dq.size(), dq_raw);
  narrow(dk.data(), p.dtype, dk.size(), dk_raw);
  narrow(dv.data(), p.dtype, dv.size(), dv_raw);
}

}  // namespace gna::cpu
