"""The row kernels behind the localisation metrics (metrics/_rows.py): the threaded numpy CPU path
equals the torch path other devices take and an independent per-row reference, ties included."""

from contextlib import contextmanager

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import mannwhitneyu
from xaibench.metrics import _rows

# rows with many ties: values from a few levels; labels and k vary per row
rows = st.integers(1, 7).flatmap(lambda b: st.integers(2, 40).flatmap(lambda n: st.tuples(
    st.lists(st.lists(st.sampled_from([-1.0, 0.0, 0.0, 0.5, 1.0, 2.5]), min_size=n, max_size=n), min_size=b,
             max_size=b),
    st.lists(st.lists(st.booleans(), min_size=n, max_size=n), min_size=b, max_size=b),
    st.lists(st.integers(-1, n + 2), min_size=b, max_size=b),
    st.sampled_from([1, 2, 3]))))


def _case(data):
    vals, labs, ks, threads = data
    return (torch.tensor(vals, dtype=torch.float32), torch.tensor(labs, dtype=torch.bool), torch.tensor(ks), threads)


@contextmanager
def threads(n):
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@settings(max_examples=60, deadline=None)
@given(rows)
def test_top_k_rows_equals_stable_sort_rule(data):
    v, _, k, n = _case(data)
    with threads(n):
        got = _rows.top_k_rows(v, k)
    assert torch.equal(got, _rows._top_k_torch(v, k.clamp(0, v.shape[1])))
    for i in range(len(v)):  # reference: a stable descending sort of the row, first k
        order = sorted(range(v.shape[1]), key=lambda j: -float(v[i, j]))
        want = torch.zeros(v.shape[1], dtype=torch.bool)
        want[order[: max(0, min(int(k[i]), v.shape[1]))]] = True
        assert torch.equal(got[i], want)


@settings(max_examples=60, deadline=None)
@given(rows)
def test_mann_whitney_u_equals_scipy_with_ties(data):
    v, lab, _, n = _case(data)
    with threads(n):
        got = _rows.mann_whitney_u(v, lab)
    torch.testing.assert_close(got, _rows._mann_whitney_u_torch(v, lab), rtol=0, atol=0)
    for i in range(len(v)):
        pos, neg = v[i][lab[i]].numpy(), v[i][~lab[i]].numpy()
        want = mannwhitneyu(pos, neg).statistic if len(pos) and len(neg) else 0.0
        assert float(got[i]) == pytest.approx(want, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(rows)
def test_counts_argmax_and_positive_sums(data):
    v, lab, _, n = _case(data)
    with threads(n):
        assert torch.equal(_rows.row_counts(lab), lab.sum(1))
        assert torch.equal(_rows.row_argmax(v), v.argmax(1))
        total, inside = _rows.positive_sums(v, lab)
    pos = v.double().clamp_min(0)
    torch.testing.assert_close(total, pos.sum(1))
    torch.testing.assert_close(inside, (pos * lab).sum(1))


def test_positive_sums_do_not_overflow_float32():
    v = torch.full((2, 8), 3e38)
    total, inside = _rows.positive_sums(v, torch.ones(2, 8, dtype=torch.bool))
    assert torch.isfinite(total).all() and torch.equal(total, inside)
    assert float(total[0]) == pytest.approx(8 * 3e38, rel=1e-6)


def test_row_threads_split_rows_exactly():
    """Every row is computed once whatever the thread count (no row lost or done twice at the edges)."""
    g = torch.Generator().manual_seed(0)
    v = torch.rand(11, 500, generator=g)
    lab = torch.rand(11, 500, generator=g) > 0.7
    outs = []
    for n in (1, 2, 3, 16):
        with threads(n):
            outs.append((_rows.mann_whitney_u(v, lab), _rows.top_k_rows(v, 37)))
    for u, t in outs[1:]:
        assert torch.equal(u, outs[0][0]) and torch.equal(t, outs[0][1])
    assert bool((outs[0][0] > 0).all()) and bool((outs[0][1].sum(1) == 37).all())
