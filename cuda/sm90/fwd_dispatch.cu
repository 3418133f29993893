// The sm90 forward's launcher API (cuda/common/launch_api.h): the shared dispatcher
// (cuda/common/fwd_dispatch.h) over the sm90 traits (arch.h). Host code only (no CUTLASS).
#include "../common/fwd_dispatch.h"
#include "arch.h"

GNA_FWD_DISPATCH_INSTANTIATE(gna::sm90::Arch)
