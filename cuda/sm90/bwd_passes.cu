// The backward's two element-wise passes around the main kernel (cuda/common/bwd_passes.cuh),
// compiled for sm_90a, with dQ read back in the consumer warpgroups' fragment order
// (dq_order.h).
#include "../common/bwd_passes.cuh"
#include "device/bwd_kernel_launch.h"
#include "dq_order.h"

namespace gna::sm90 {
namespace {

struct FragmentDqOrder {
  static __device__ int offset(int row, int col, int head_dim) {
    return dq_offset(row, col, head_dim);
  }
};

}  // namespace

cudaError_t launch_bwd_row_stats(DType dtype, const BwdParams& p, cudaStream_t stream) {
  return launch_bwd_row_stats_pass(dtype, p, stream);
}

cudaError_t launch_bwd_dq_convert(DType dtype, const BwdParams& p, cudaStream_t stream) {
  return launch_bwd_dq_convert_pass<FragmentDqOrder>(dtype, p, stream);
}

}  // namespace gna::sm90
