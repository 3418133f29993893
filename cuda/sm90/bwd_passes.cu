// The backward's two element-wise passes around the main kernel (cuda/common/bwd_passes.cuh),
// compiled for sm_90a, with dQ read back in the consumer warpgroups' fragment order
// (dq_order.h).
#include "../common/bwd_passes.cuh"
#include "../common/kernel_launchers.h"
#include "arch.h"
#include "dq_order.h"

namespace gna {
namespace sm90 {
namespace {

struct FragmentDqOrder {
  static __device__ int offset(int row, int col, int head_dim) {
    return dq_offset(row, col, head_dim);
  }
};

}  // namespace
}  // namespace sm90

template <>
cudaError_t launch_bwd_row_stats<sm90::Arch>(DType dtype, const BwdParams& p, cudaStream_t stream) {
  return launch_bwd_row_stats_pass(dtype, p, stream);
}

template <>
cudaError_t launch_bwd_dq_convert<sm90::Arch>(DType dtype, const BwdParams& p,
                                              cudaStream_t stream) {
  return launch_bwd_dq_convert_pass<sm90::FragmentDqOrder>(dtype, p, stream);
}

}  // namespace gna
