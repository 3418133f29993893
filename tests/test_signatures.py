"""The public signatures agree with `jax_gna.gna`'s, the one written out in full.

`na1d`/`na2d`/`na3d` share it; `gna_sharded` takes every keyword of `gna` plus its own;
`jax_gna.reference.gna` and `supported_implementations` take the ones that concern them. A new
option of `gna` fails here until each of the others takes it (or it joins the listed
exceptions), so none drifts apart unnoticed.
"""

import inspect

import pytest

import jax_gna
from jax_gna import parallel, reference

GNA = inspect.signature(jax_gna.gna).parameters


def _parameters(fn) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


def _assert_as_in_gna(fn, names) -> None:
    """`fn` takes `names` as `gna` does: same kind (positional or keyword-only) and default."""
    theirs = _parameters(fn)
    for name in names:
        assert theirs[name].kind == GNA[name].kind, (fn.__qualname__, name)
        assert theirs[name].default == GNA[name].default, (fn.__qualname__, name)


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_fixed_rank_entry_points_have_the_signature_of_gna(rank):
    na = getattr(jax_gna, f"na{rank}d")
    assert inspect.signature(na) == inspect.signature(jax_gna.gna)
    assert na.__name__ == f"na{rank}d"


def test_fixed_rank_entry_points_refuse_unknown_arguments_under_their_name():
    with pytest.raises(TypeError, match=r"na2d\(\).*'windw'"):
        jax_gna.na2d(None, None, None, 3, windw=3)
    with pytest.raises(TypeError, match=r"na1d\(\).*kernel_size"):
        jax_gna.na1d(None, None, None)


def test_gna_sharded_takes_every_keyword_of_gna_and_its_own():
    theirs = _parameters(parallel.gna_sharded)
    assert set(GNA) <= set(theirs), set(GNA) - set(theirs)
    assert set(theirs) - set(GNA) == {"mesh", "axis_name", "spatial_axis", "strategy"}
    _assert_as_in_gna(parallel.gna_sharded, GNA)
    for name in GNA:
        assert theirs[name].annotation == GNA[name].annotation, name


def test_reference_takes_the_keywords_of_gna_but_those_of_the_kernels():
    theirs = _parameters(reference.gna)
    assert set(theirs) <= set(GNA)
    kernels_only = {"implementation", "q_tile_shape", "kv_tile_shape", "deterministic"}
    assert set(GNA) - set(theirs) == kernels_only
    _assert_as_in_gna(reference.gna, theirs)


def test_supported_implementations_takes_the_keywords_that_decide_support():
    theirs = _parameters(jax_gna.supported_implementations)
    assert set(theirs) <= set(GNA)
    per_call = {"additional_keys", "additional_values", "return_lse", "implementation"}
    per_call |= {"q_descale", "k_descale", "v_descale"}  # float8 support is the dtype's
    per_call.add("out_dtype")  # every implementation's output is cast to it
    assert set(GNA) - set(theirs) == per_call | {"deterministic", "mask", "bias"}
    _assert_as_in_gna(jax_gna.supported_implementations, theirs)
