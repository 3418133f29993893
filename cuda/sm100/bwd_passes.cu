// The backward's two element-wise passes around the main kernel (cuda/common/bwd_passes.cuh),
// compiled for sm_100a, with dQ read back row-major (bwd_config.h).
#include "../common/bwd_passes.cuh"
#include "bwd_config.h"
#include "device/bwd_kernel_launch.h"

namespace gna::sm100 {
namespace {

struct RowMajorDqOrder {
  static __device__ int offset(int row, int col, int head_dim) {
    return dq_offset(row, col, head_dim);
  }
};

}  // namespace

cudaError_t launch_bwd_row_stats(DType dtype, const BwdParams& p, cudaStream_t stream) {
  return launch_bwd_row_stats_pass(dtype, p, stream);
}

cudaError_t launch_bwd_dq_convert(DType dtype, const BwdParams& p, cudaStream_t stream) {
  return launch_bwd_dq_convert_pass<RowMajorDqOrder>(dtype, p, stream);
}

}  // namespace gna::sm100
