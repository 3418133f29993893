// The TMA tensor maps one kernel launch takes (as a __grid_constant__ parameter): two per
// tensor, which differ only where an axis is split by dilation group (tile_loads.h; map 1
// equals map 0 otherwise). fwd_host.h encodes them.
#pragma once

#include <cuda.h>

namespace gna {

// The maps of one tensor; the kernels pick one per work item (for_each_tile_box's `map`).
struct TensorMapPair {
  CUtensorMap map[2];
};

struct FwdMaps {
  TensorMapPair q, k, v;
};

struct BwdMaps {
  TensorMapPair q, dout, k, v;
};

}  // namespace gna
