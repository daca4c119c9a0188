"""Property tests for `s3d.schemes`: feasibility, attained gains, optimality against an independent search."""
import math
import pytest
import torch
from s3d.schemes import (SCHEME_KINDS, check_split, random_spectra, search_split, split_gain, split_scheme,
                         split_schemes)


def _random_sym(g, d):
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    return (A + A.T) / 2 + torch.randn(1, generator=g, dtype=torch.float64) * torch.eye(d, dtype=torch.float64)


@pytest.mark.parametrize("seed", range(5))
def test_random_matrices_feasible_and_attained(seed):
    g = torch.Generator().manual_seed(seed)
    for _ in range(20):
        d = int(torch.randint(1, 7, (1,), generator=g))
        S = _random_sym(g, d)
        c = 1 + 3 * float(torch.rand(1, generator=g))
        ev, V = torch.linalg.eigh(S)
        prev = 0.0
        for m in range(1, 7):
            sch = split_scheme(ev[0], V[:, 0], ev[-1], V[:, -1], m, c)
            val = check_split(S, sch.weights, sch.deltas, c)
            assert len(sch.weights) <= m
            assert math.isclose(val, sch.gain, rel_tol=1e-9, abs_tol=1e-12)
            assert sch.gain <= prev + 1e-12  # more copies never hurt
            prev = sch.gain
        # the bound (Q) holds with equality for m >= 4
        q = (c + 1) / 2 * min(ev[0].item(), 0) - (c - 1) / 2 * max(ev[-1].item(), 0)
        assert math.isclose(split_gain(ev[0].item(), ev[-1].item(), 4, c), q, rel_tol=1e-12, abs_tol=1e-12)


def test_batched_matches_single():
    g = torch.Generator().manual_seed(7)
    S = torch.stack([_random_sym(g, 5) for _ in range(12)])
    ev, V = torch.linalg.eigh(S)
    for m in (1, 2, 3, 4):
        b = split_schemes(ev[:, 0], V[:, :, 0], ev[:, -1], V[:, :, -1], m, 2.2)
        for i in range(12):
            s = split_scheme(ev[i, 0], V[i, :, 0], ev[i, -1], V[i, :, -1], m, 2.2)
            k = len(s.weights)
            assert b.kind[i] == s.kind and int(b.k[i]) == k
            torch.testing.assert_close(b.weights[i, :k], s.weights)
            torch.testing.assert_close(b.deltas[i, :k], s.deltas)
            assert (b.weights[i, k:] == 0).all() and (b.deltas[i, k:] == 0).all()
            assert math.isclose(check_split(S[i], b.weights[i], b.deltas[i], 2.2), float(b.gain[i]), rel_tol=1e-9, abs_tol=1e-12)


def test_mixed_triplet_beats_paper_triplet():
    """The paper's Theorem 2.2 value is beaten on an indefinite S, by our scheme and by the independent search."""
    S = torch.diag(torch.tensor([-1.0, 0.3, 1.0], dtype=torch.float64))
    c = 2.0
    paper = min((c + 1) / 2 * -1.0, -(c - 1) / 2 * 1.0, 0.0)
    found = search_split(S, 3, c)[0].item()
    ours = split_gain(-1.0, 1.0, 3, c)
    assert found < paper - 0.1
    assert found >= ours - 1e-6
    assert split_scheme(-1.0, torch.eye(3, dtype=torch.float64)[0], 1.0, torch.eye(3, dtype=torch.float64)[2], 3, c).kind == 'mixed triplet'


@pytest.mark.parametrize("m", [2, 3, 4, 5])
def test_search_never_beats_closed_form(m):
    mats = random_spectra(3, d=3)
    S = torch.stack(list(mats.values()))
    ev = torch.linalg.eigvalsh(S)
    for c in (1.0, 3.0):
        found = search_split(S, m, c, starts=64, steps=150, seed=m)[0]
        closed = split_gain(ev[:, 0], ev[:, -1], min(m, 4), c)
        assert (found >= closed - 1e-6).all(), (found - closed)


def test_s2d_when_c_is_one():
    for lmin, lmax in [(-2.0, 1.0), (0.5, 3.0), (-1.0, -0.2), (0.0, 0.0)]:
        for m in range(1, 6):
            assert split_gain(lmin, lmax, m, 1.0) == (min(lmin, 0.0) if m > 1 else 0.0)


def test_psd_stuck_for_s2d_not_for_s3d():
    assert split_gain(0.1, 2.0, 4, 1.0) == 0.0
    assert split_gain(0.1, 2.0, 2, 3.0) == pytest.approx(-1.0)


def test_no_split_when_nothing_helps():
    s = split_scheme(0.0, torch.tensor([1.0, 0.0]), 0.0, torch.tensor([0.0, 1.0]), 4, 3.0)
    assert s.kind == 'none' and s.weights.tolist() == [1.0] and s.gain == 0.0 and (s.deltas == 0).all()


@pytest.mark.parametrize("call,msg", [
    (lambda: split_gain(-1.0, 1.0, 0, 2.0), "m must be"),
    (lambda: split_gain(-1.0, 1.0, 2.5, 2.0), "m must be"),
    (lambda: split_gain(-1.0, 1.0, 2, 0.9), "c must be"),
    (lambda: split_gain(-1.0, 1.0, 2, float('nan')), "c must be"),
    (lambda: split_gain(float('nan'), 1.0, 2, 2.0), "finite"),
    (lambda: split_gain(2.0, 1.0, 2, 2.0), "lam_min > lam_max"),
    (lambda: split_gain(torch.zeros(3), torch.zeros(4), 2, 2.0), "shapes differ"),
    (lambda: split_scheme(-1.0, torch.zeros(2), 1.0, torch.ones(2), 2, 2.0), "nonzero"),
    (lambda: split_schemes(torch.zeros(3), torch.ones(2, 4), torch.zeros(3), torch.ones(2, 4), 2, 2.0), "expected lam"),
])
def test_bad_input(call, msg):
    with pytest.raises(ValueError, match=msg):
        call()


def test_kinds_cover_table():
    assert len(SCHEME_KINDS) == 7 and SCHEME_KINDS[0] == 'none'


@pytest.mark.parametrize("c", [1.3, 2.0, 3.0, 4.0])
def test_erratum_scope_against_search(c):
    "The independent search goes below the paper's G3 exactly inside `triplet_erratum_interval(c)`."
    from s3d.schemes import paper_triplet_gain, triplet_erratum_interval

    lo, hi = triplet_erratum_interval(c)
    ratios = [r for r in (0.2, 0.9, 1.5, 2.5, 6.0, 40.0) if min(abs(r - lo), abs(r - hi)) > 0.05]
    S = torch.stack([torch.diag(torch.tensor([-1.0, 0.3, r], dtype=torch.float64)) for r in ratios])
    found = search_split(S, 3, c, seed=5)[0]
    paper = paper_triplet_gain(-1.0, torch.tensor(ratios, dtype=torch.float64), c)
    below = (paper - found > 1e-6).tolist()
    assert below == [lo < r < hi for r in ratios]
    assert (found >= split_gain(-torch.ones(len(ratios), dtype=torch.float64),
                                torch.tensor(ratios, dtype=torch.float64), 3, c) - 1e-6).all()


def test_erratum_interval_edges():
    from s3d.schemes import triplet_erratum_interval

    lo, hi = triplet_erratum_interval(2 + 5 ** 0.5)
    assert math.isclose(lo, hi, rel_tol=1e-12)  # the interval closes at c = 2 + sqrt(5)
    assert triplet_erratum_interval(1.0) == (0.0, 0.0)
    lo, hi = triplet_erratum_interval(3.0)
    assert (lo, hi) == (1.0, 3.0)
