// The backward's two element-wise passes around the main kernel (cuda/common/bwd_passes.cuh),
// compiled for sm_100a, with dQ read back row-major (bwd_config.h).
#include "../common/bwd_passes.cuh"
#include "../common/kernel_launchers.h"
#include "arch.h"

namespace gna {
namespace sm100 {
namespace {

struct RowMajorDqOrder {
  static __device__ int offset(int row, int col, int head_dim) {
    return dq_offset(row, col, head_dim);
  }
};

}  // namespace
}  // namespace sm100

template <>
cudaError_t launch_bwd_row_stats<sm100::Arch>(DType dtype, const BwdParams& p,
                                              cudaStream_t stream) {
  return launch_bwd_row_stats_pass(dtype, p, stream);
}

template <>
cudaError_t launch_bwd_dq_convert<sm100::Arch>(DType dtype, const BwdParams& p,
                                               cudaStream_t stream) {
  return launch_bwd_dq_convert_pass<sm100::RowMajorDqOrder>(dtype, p, stream);
}

}  // namespace gna
