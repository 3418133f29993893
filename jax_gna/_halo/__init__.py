"""The halo algorithm of context parallelism, below the op that uses it.

A spatial axis split over devices is attended where it lies: every device receives from its
neighbours only the keys and values its queries' windows reach. `plan` fixes what every device
computes (NumPy only), `exchange` moves rows between neighbours, and `shard` attends one
device's part. Two callers lower to it: the `jax.shard_map` of `jax_gna.parallel`, and the
partitioning rule of the FFI op (`jax_gna._ffi_op`), which sits below `jax_gna.parallel` (it
needs this package, and `jax_gna.parallel` needs the implementations built on that op).
"""
