// The sm100 backward's launcher API (cuda/common/launch_api.h): the shared dispatcher
// (cuda/common/bwd_dispatch.h) over the sm100 traits (arch.h). Host code only (no CUTLASS).
#include "../common/bwd_dispatch.h"
#include "arch.h"

GNA_BWD_DISPATCH_INSTANTIATE(gna::sm100::Arch)
