// Where the backward kernel leaves dQ partials: per Q tile (64 rows) of one head, group and
// batch entry, a block of 64 x D fp32 at row-statistics slot * D of the workspace's
// accumulator (bwd_config.h), in the consumer warpgroups' wgmma fragment order rather than
// row-major. Staged in that order, a warpgroup's partial goes to shared memory with
// conflict-free 8-byte stores and to the block with one bulk reduce-add; the dQ conversion
// pass (bwd_passes.cu) reads it back with dq_offset. Host and device, no CUDA headers.
#pragma once

#include "gna/window.h"

namespace gna::sm90 {

// Columns of dQ one warpgroup accumulates at a time: d128 and d256 split D over the two consumer
// warpgroups, 64 columns each (d256: two parts each, warpgroup w's columns 64 (2 part + w) on),
// smaller head dims do not (each warpgroup sums over its own KV rows instead).
constexpr int dq_fragment_cols(int head_dim) { return head_dim >= 128 ? 64 : head_dim; }

// Offset (floats) of element pair `pair` (accumulator elements 2 pair, 2 pair + 1) of thread
// `thread` (0..127) of a warpgroup, inside the warpgroup's part of the block: pairs of the 128
// threads are consecutive, so a warp's store of one pair covers 256 contiguous bytes.
GNA_HOST_DEVICE int dq_pair_offset(int pair, int thread) { return pair * 256 + 2 * thread; }

// Offset (floats) of dQ element (row, col) of a Q tile inside its block. Accumulator element
// i of thread 32 warp + lane of an m64nN wgmma sits at row 16 warp + lane / 4 + 8 ((i >> 1) &
// 1) and column 8 (i >> 2) + 2 (lane % 4) + (i & 1) of the part `col / cols` (of the block's
// D / cols parts) that holds column `col`; that part starts at 64 * cols * its index.
GNA_HOST_DEVICE int dq_offset(int row, int col, int head_dim) {
  const int cols = dq_fragment_cols(head_dim);
  const int part = col / cols, c = col % cols;
  const int lane = 4 * (row % 8) + (c % 8) / 2;
  const int i = 4 * (c / 8) + 2 * ((row % 16) / 8) + (c & 1);
  return part * 64 * cols + dq_pair_offset(i / 2, 32 * (row / 16) + lane) + (i & 1);
}

}  // namespace gna::sm90
