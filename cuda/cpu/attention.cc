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

// How many threads `work` scalar operations are worth, on any machine (at least 1).
double threads_worth(double work) {
  constexpr double kMinWorkPerThread = 1 << 18;
  return std::max(1.0, work / kMinWorkPerThread);  // in double: an estimate, never overflows
}

template <typename Fn>
void parallel_for(int64_t tasks, double work_per_task, Fn&& fn) {
  const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
  const int threads = static_cast<int>(
      std::min(static_cast<double>(std::min(hw, tasks)), threads_worth(tasks * work_per_task)));
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

// ---------------------------------------------------------------------------------------------
// Backward: per-slice accumulators, the zero-cotangent rule.

// dK or dV rows of one (batch, kv head), by key token: the result's rows, or the private band of a
// query slice (keys first, first + 1, ...).
struct KeyRows {
  float* base;
  int64_t first;
  int64_t stride;
  float* row(int64_t key) const { return base + (key - first) * stride; }
};

// The dK/dV of one query slice over the keys [first, first + keys) (row-major [keys, D]).
struct Band {
  int64_t first = 0, keys = 0;
  std::vector<float> dk, dv;
};

bool all_zero(const float* x, int n) {
  for (int i = 0; i < n; ++i)
    if (x[i] != 0.f) return false;  // nan counts as nonzero
  return true;
}

// The backward splits the queries of a (batch, kv head) into slices until there are this many
// tasks (a constant, not the machine's thread count, so that the result is the same on every
// machine), with at least kMinSliceTokens queries per slice (below that, a slice's band of keys
// is mostly overlap with its neighbours').
constexpr int64_t kSliceTasks = 16;
constexpr int64_t kMinSliceTokens = 64;

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
  // dP = dO . V takes V's finite part: a non-finite value reaches the gradients of exactly the
  // queries whose window holds it, through delta = dO . O (their O is non-finite there).
  std::vector<float> v_finite_storage;
  const float* v_finite = v.data();
  const size_t v_count = p.batch * kv_tokens * Hkv * Dv;
  if (!std::all_of(v_finite, v_finite + v_count, [](float x) { return std::isfinite(x); })) {
    v_finite_storage.resize(v_count);
    std::transform(v_finite, v_finite + v_count, v_finite_storage.begin(),
                   [](float x) { return std::isfinite(x) ? x : 0.f; });
    v_finite = v_finite_storage.data();
  }
  std::vector<float> dq(p.batch * tokens * H * D, 0.f);
  std::vector<float> dk(p.batch * kv_tokens * Hkv * D, 0.f);
  std::vector<float> dv(p.batch * kv_tokens * Hkv * Dv, 0.f);
  const TokenGrid grid(p, false), kv_grid(p, true);
  const int64_t window = max_box_size(p);

  // One task = one (batch, kv head) and one slice of the query tokens: it owns the dq rows of its
  // slice for the query heads of the group. With one slice per (batch, kv head), the task also
  // owns that dk/dv slice and writes it directly; with several (few (batch, kv head) pairs),
  // each slice accumulates dk/dv over the band of keys its queries see, and the bands are summed
  // in slice order afterwards (so the result does not depend on scheduling).
  const int64_t pairs = p.batch * Hkv;
  const double work_per_query = double(group) * window * 2 * (D + Dv);
  const double slices_worth = std::min({threads_worth(double(pairs) * tokens * work_per_query),
                                        double(kSliceTasks), double(tokens / kMinSliceTokens)}) /
                              pairs;
  const int64_t slices = std::max<int64_t>(1, static_cast<int64_t>(slices_worth));
  const int64_t slice_tokens = (tokens + slices - 1) / slices;
  std::vector<Band> bands(slices > 1 ? pairs * slices : 0);

  parallel_for(pairs * slices, double(slice_tokens) * work_per_query, [&](int64_t task) {
    const int64_t slice = task % slices, pair = task / slices;
    const int hk = static_cast<int>(pair % Hkv);
    const int64_t b = pair / Hkv;
    const int64_t t_begin = slice * slice_tokens;
    const int64_t t_end = std::min(tokens, t_begin + slice_tokens);
    const int64_t kv_first_row = b * kv_tokens * Hkv + hk;
    KeyRows dk_rows{dk.data() + kv_first_row * D, 0, int64_t{Hkv} * D};
    KeyRows dv_rows{dv.data() + kv_first_row * Dv, 0, int64_t{Hkv} * Dv};
    if (slices > 1) {
      int64_t first = kv_tokens, last = -1;
      for (int64_t t = t_begin; t < t_end; ++t) {
        int coord[kMaxRank];
        grid.coords(t, coord);
        const KeyBox box = key_box(p, coord);
        if (box.size() == 0) continue;
        // Row-major with positive steps: the box's first and last keys are its corners.
        int64_t lo = 0, hi = 0;
        for (int a = 0; a < kMaxRank; ++a) {
          lo += box.first[a] * kv_grid.stride[a];
          hi += (box.first[a] + int64_t{box.count[a] - 1} * box.step[a]) * kv_grid.stride[a];
        }
        first = std::min(first, lo), last = std::max(last, hi);
      }
      if (last < first) return;  // no query of the slice sees a key
      Band& band = bands[task];
      band.first = first, band.keys = last - first + 1;
      band.dk.assign(band.keys * D, 0.f);
      band.dv.assign(band.keys * Dv, 0.f);
      dk_rows = {band.dk.data(), first, D};
      dv_rows = {band.dv.data(), first, Dv};
    }
    for (int h = hk * group; h < (hk + 1) * group; ++h) {
      for (int64_t t = t_begin; t < t_end; ++t) {
        int coord[kMaxRank];
        grid.coords(t, coord);
        const KeyBox box = key_box(p, coord);
        if (box.size() == 0) continue;  // no key, no gradient (lse is -inf there)
        const int64_t row = (b * tokens + t) * H + h;
        const float* do_row = dout.data() + row * Dv;
        // A query whose cotangents are all zero contributes nothing: not even 0 * nan, where
        // its window holds a non-finite entry and a loss that does not use it is finite.
        if (dlse[row] == 0.f && all_zero(do_row, Dv)) continue;
        const float* q_row = q.data() + row * D;
        float* dq_row = dq.data() + row * D;
        // d lse / d score = P, so the lse cotangent enters as a shift of the softmax "delta".
        const float delta = dot(do_row, out.data() + row * Dv, Dv) - dlse[row];
        const float row_lse = lse[row];
        for_each_key(kv_grid, box, [&](int64_t, int64_t key) {
          const int64_t kv_row = (b * kv_tokens + key) * Hkv + hk;
          const float* k_row = k.data() + kv_row * D;
          const float prob = std::exp(p.scale * dot(q_row, k_row, D) - row_lse);
          if (prob == 0.f) return;  // contributes exactly 0 (not 0 * inf)
          const float dprob = dot(do_row, v_finite + kv_row * Dv, Dv);
          const float dscore = prob * (dprob - delta) * p.scale;
          axpy(dscore, k_row, dq_row, D);
          axpy(dscore, q_row, dk_rows.row(key), D);
          axpy(prob, do_row, dv_rows.row(key), Dv);
        });
      }
    }
  });
  if (slices > 1) {
    parallel_for(pairs, double(kv_tokens) * (D + Dv), [&](int64_t pair) {
      const int hk = static_cast<int>(pair % Hkv);
      const int64_t b = pair / Hkv;
      for (int64_t slice = 0; slice < slices; ++slice) {
        const Band& band = bands[pair * slices + slice];
        for (int64_t n = 0; n < band.keys; ++n) {
          const int64_t kv_row = (b * kv_tokens + band.first + n) * Hkv + hk;
          axpy(1.f, band.dk.data() + n * D, dk.data() + kv_row * D, D);
          axpy(1.f, band.dv.data() + n * Dv, dv.data() + kv_row * Dv, Dv);
        }
      }
    });
  }
  narrow(dq.data(), p.dtype, dq.size(), dq_raw);
  narrow(dk.data(), p.dtype, dk.size(), dk_raw);
  narrow(dv.data(), p.dtype, dv.size(), dv_raw);
}

}  // namespace gna::cpu
