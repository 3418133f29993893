"""The oracle itself against worked examples read off NATTEN's reference mask (an independent
source; 1-D, L = 10), plus the structural consequences of the per-axis rule (docs/design.md,
"GNA semantics")."""

import itertools

import numpy as np
import pytest

from tests import oracle

R = lambda a, b: list(range(a, b + 1))  # noqa: E731  inclusive range, as the examples write it

# (K, s, d, causal) -> {query: keys}, L = 10. Only entries worked out from that mask are listed.
EXAMPLES = {
    "A_plain_K3": (
        (3, 1, 1, False),
        {0: [0, 1, 2], 1: [0, 1, 2], 2: [1, 2, 3], 3: [2, 3, 4], 4: [3, 4, 5], 5: [4, 5, 6],
         6: [5, 6, 7], 7: [6, 7, 8], 8: [7, 8, 9], 9: [7, 8, 9]},
    ),
    "B_even_K4": (
        (4, 1, 1, False),
        {0: R(0, 3), 1: R(0, 3), 2: R(0, 3), 3: R(1, 4), 4: R(2, 5), 5: R(3, 6), 6: R(4, 7),
         7: R(5, 8), 8: R(6, 9), 9: R(6, 9)},
    ),
    "C_strided_K5_s2": (
        (5, 2, 1, False),
        {0: R(0, 4), 1: R(0, 4), 2: R(1, 5), 3: R(1, 5), 4: R(3, 7), 5: R(3, 7), 6: R(5, 9),
         7: R(5, 9), 8: R(5, 9), 9: R(5, 9)},
    ),
    "D_K5_s3_partial_group": (
        (5, 3, 1, False),
        {0: R(0, 4), 1: R(0, 4), 2: R(0, 4), 3: R(2, 6), 4: R(2, 6), 5: R(2, 6), 6: R(5, 9),
         7: R(5, 9), 8: R(5, 9), 9: R(5, 9)},
    ),
    "E_blocked_K3_s3": (
        (3, 3, 1, False),
        {0: R(0, 2), 1: R(0, 2), 2: R(0, 2), 3: R(3, 5), 4: R(3, 5), 5: R(3, 5), 6: R(6, 8),
         7: R(6, 8), 8: R(6, 8), 9: R(7, 9)},
    ),
    "L_K5_s4": (
        (5, 4, 1, False),
        {0: R(0, 4), 1: R(0, 4), 2: R(0, 4), 3: R(0, 4), 4: R(4, 8), 5: R(4, 8), 6: R(4, 8),
         7: R(4, 8), 8: R(5, 9), 9: R(5, 9)},
    ),
    "F_dilated_K3_d2": (
        (3, 1, 2, False),
        {0: [0, 2, 4], 1: [1, 3, 5], 2: [0, 2, 4], 3: [1, 3, 5], 4: [2, 4, 6], 5: [3, 5, 7],
         6: [4, 6, 8], 7: [5, 7, 9], 8: [4, 6, 8], 9: [5, 7, 9]},
    ),
    "G_K3_s2_d3": (
        (3, 2, 3, False),
        {0: [0, 3, 6], 1: [1, 4, 7], 2: [2, 5, 8], 3: [0, 3, 6], 4: [1, 4, 7], 5: [2, 5, 8],
         6: [3, 6, 9], 7: [1, 4, 7], 8: [2, 5, 8], 9: [3, 6, 9]},
    ),
    "H_causal_K3": (
        (3, 1, 1, True),
        {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [1, 2, 3], 9: [7, 8, 9]},
    ),
    "I_causal_K4_s2": (
        (4, 2, 1, True),
        {0: [0], 1: [0, 1], 2: [0, 1, 2], 3: [0, 1, 2, 3], 4: [2, 3, 4], 5: [2, 3, 4, 5],
         6: [4, 5, 6], 7: [4, 5, 6, 7], 8: [6, 7, 8], 9: [6, 7, 8, 9]},
    ),
    "J_causal_blocked_K5_s5": (
        (5, 5, 1, True),
        {0: [0], 1: [0, 1], 4: R(0, 4), 5: [5], 6: [5, 6], 9: R(5, 9)},
    ),
    "K_causal_dilated_K3_d2": (
        (3, 1, 2, True),
        {0: [0], 1: [1], 2: [0, 2], 3: [1, 3], 4: [0, 2, 4], 5: [1, 3, 5], 6: [2, 4, 6],
         7: [3, 5, 7], 8: [4, 6, 8], 9: [5, 7, 9]},
    )
}  # fmt: skip


@pytest.mark.parametrize("name", list(EXAMPLES))
def test_worked_example_1d(name):
    (k, s, d, causal), expected = EXAMPLES[name]
    vis = oracle.visible((10,), k, s, d, causal)
    for q, keys in expected.items():
        assert list(np.flatnonzero(vis[q])) == keys, f"{name} q{q}"
        assert oracle.axis_keys(q, 10, k, s, d, causal) == keys, f"{name} q{q}"


def test_worked_example_2d_both_axes_shift():
    vis = oracle.visible((4, 6), (3, 3), 1, 1, False)
    q = 0 * 6 + 5
    expected = sorted(r * 6 + c for r in (0, 1, 2) for c in (3, 4, 5))
    assert list(np.flatnonzero(vis[q])) == expected


def _legal_1d(max_len):
    for length in range(2, max_len + 1):
        for k in range(2, length + 1):
            for d in range(1, length // k + 1):
                for s in range(1, k + 1):
                    yield length, k, s, d


def test_non_causal_window_shifts_at_border_never_shrinks():
    for length, k, s, d in _legal_1d(14):
        vis = oracle.visible((length,), k, s, d, False)
        assert (vis.sum(1) == k).all(), (length, k, s, d)
        assert vis.diagonal().all(), (length, k, s, d)


def test_causal_window_sees_self_never_future_at_most_k():
    for length, k, s, d in _legal_1d(14):
        vis = oracle.visible((length,), k, s, d, True)
        cnt = vis.sum(1)
        assert ((cnt >= 1) & (cnt <= k)).all(), (length, k, s, d)
        assert vis.diagonal().all() and not np.triu(vis, 1).any(), (length, k, s, d)


def test_causal_stride_one_is_sliding_window():
    for length, k, _, _ in _legal_1d(14):
        vis = oracle.visible((length,), k, 1, 1, True)
        i, j = np.indices(vis.shape)
        assert (vis == ((j <= i) & (j > i - k))).all(), (length, k)


def test_stride_equal_to_window_is_blocked_attention_when_divisible():
    for k, blocks in itertools.product(range(2, 6), range(1, 4)):
        length = k * blocks
        vis = oracle.visible((length,), k, k, 1, False)
        i, j = np.indices(vis.shape)
        assert (vis == (i // k == j // k)).all(), (k, blocks)


def test_nd_visibility_is_product_of_axes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        shape = tuple(int(x) for x in rng.integers(2, 6, size=2))
        ks = tuple(int(rng.integers(2, n + 1)) for n in shape)
        ss = tuple(int(rng.integers(1, k + 1)) for k in ks)
        cs = tuple(bool(c) for c in rng.integers(0, 2, size=2))
        vis = oracle.visible(shape, ks, ss, 1, cs).reshape(shape * 2)
        a0 = oracle.visible(shape[:1], ks[0], ss[0], 1, cs[0])
        a1 = oracle.visible(shape[1:], ks[1], ss[1], 1, cs[1])
        assert (vis == a0[:, None, :, None] & a1[None, :, None, :]).all()


def test_attention_matches_plain_softmax_for_full_window():
    """K == L on every axis, non-causal: plain dense attention (checks the oracle's softmax,
    GQA head mapping and extra tokens against a direct formula)."""
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 3, 4, 4, 5))
    k = rng.normal(size=(2, 3, 4, 2, 5))
    v = rng.normal(size=(2, 3, 4, 2, 6))
    ek = rng.normal(size=(2, 2, 2, 5))
    ev = rng.normal(size=(2, 2, 2, 6))
    out, lse = oracle.attention(q, k, v, (3, 4), rank=2, extra_k=ek, extra_v=ev, scale=0.7)
    kk = np.concatenate([k.reshape(2, 12, 2, 5), ek], 1).repeat(2, axis=2)
    vv = np.concatenate([v.reshape(2, 12, 2, 6), ev], 1).repeat(2, axis=2)
    s = np.einsum("bnhd,bmhd->bhnm", q.reshape(2, 12, 4, 5), kk) * 0.7
    want_lse = np.log(np.exp(s).sum(-1))
    want = np.einsum("bhnm,bmhd->bnhd", np.exp(s - want_lse[..., None]), vv)
    np.testing.assert_allclose(out.reshape(2, 12, 4, 6), want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(lse.reshape(2, 12, 4), want_lse.transpose(0, 2, 1), rtol=1e-12)


def test_attention_gradients_match_finite_differences():
    rng = np.random.default_rng(2)
    shape, ks, ss, ds, cs = (5, 4), (3, 2), (2, 1), (1, 2), (False, True)
    x = {
        "q": rng.normal(size=(1, *shape, 2, 3)),
        "k": rng.normal(size=(1, *shape, 1, 3)),
        "v": rng.normal(size=(1, *shape, 1, 2)),
        "ek": rng.normal(size=(1, 2, 1, 3)),
        "ev": rng.normal(size=(1, 2, 1, 2)),
    }
    w_out = rng.normal(size=(1, *shape, 2, 2))
    w_lse = rng.normal(size=(1, *shape, 2))

    def run(**kw):
        a = {**x, **kw}
        return oracle.attention(
            a["q"], a["k"], a["v"], ks, ss, ds, cs, rank=2, extra_k=a["ek"], extra_v=a["ev"],
            scale=0.9, dout=w_out, dlse=w_lse,
        )  # fmt: skip

    _, _, grads = run()
    eps = 1e-6
    for name, g in zip(["q", "k", "v", "ek", "ev"], grads):
        flat = x[name].reshape(-1)
        for idx in rng.choice(flat.size, size=min(6, flat.size), replace=False):
            plus, minus = flat.copy(), flat.copy()
            plus[idx] += eps
            minus[idx] -= eps
            lp = run(**{name: plus.reshape(x[name].shape)})
            lm = run(**{name: minus.reshape(x[name].shape)})
            loss = lambda r: np.sum(r[0] * w_out) + np.sum(r[1] * w_lse)  # noqa: E731
            fd = (loss(lp) - loss(lm)) / (2 * eps)
            assert abs(fd - g.reshape(-1)[idx]) < 1e-6, (name, idx, fd, g.reshape(-1)[idx])
