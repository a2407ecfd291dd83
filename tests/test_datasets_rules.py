"""Scoring rules: values, vectorisation, judge counts."""

from __future__ import annotations

import numpy as np
import pytest

from udaqa_pipeline.datasets.rules import (
    RULE_JUDGES,
    apply_rule,
    finediving_rule,
    judges_needed,
    rule_holds,
)


def test_mtl_middle3():
    j = [8.0, 7.5, 9.0, 8.5, 6.0, 8.0, 10.0]  # sorted 6,7.5,8,8,8.5,9,10 -> middle 8+8+8.5
    assert apply_rule("mtl_middle3", j, 3.2) == pytest.approx(24.5 * 3.2)
    assert rule_holds("mtl_middle3", j, 3.2, 78.4)
    assert not rule_holds("mtl_middle3", j, 3.2, 78.5)


def test_other_rules():
    assert apply_rule("sum_dd", [7.0, 7.5, 8.0], 3.0) == pytest.approx(67.5)
    assert apply_rule("sum_dd_0.6", [7.0, 7.5, 8.0, 8.5, 9.0], 3.0) == pytest.approx(40 * 0.6 * 3.0)
    assert apply_rule("sum", [1, 2, 3, 4, 5, 5]) == 20
    assert apply_rule("mean", [1.0, 2.0, 6.0]) == 3.0
    assert apply_rule("identity", [42.5]) == 42.5
    assert apply_rule("identity", 42.5) == 42.5


def test_vectorised_over_leading_dims():
    rng = np.random.default_rng(0)
    j = rng.integers(0, 21, size=(4, 5, 7)) / 2
    dd = rng.uniform(1.5, 4.1, size=(4, 5))
    out = apply_rule("mtl_middle3", j, dd)
    assert out.shape == (4, 5)
    for a in range(4):
        for b in range(5):
            assert out[a, b] == pytest.approx(sum(sorted(j[a, b])[2:5]) * dd[a, b])
    # one difficulty per sample, S sampled panels per sample: (N, S, T) with dd (N, 1)
    out = apply_rule("sum_dd", j[..., :3], dd[:, :1])
    np.testing.assert_allclose(out, j[..., :3].sum(-1) * dd[:, :1])
    assert apply_rule("sum", j[..., :6]).shape == (4, 5)


def test_errors_and_counts():
    with pytest.raises(ValueError, match="needs 7"):
        apply_rule("mtl_middle3", [1.0] * 6, 2.0)
    with pytest.raises(ValueError, match="difficulty"):
        apply_rule("sum_dd", [1.0] * 3)
    with pytest.raises(ValueError, match="unknown scoring rule"):
        apply_rule("median", [1.0])
    assert finediving_rule(7) == "mtl_middle3" and finediving_rule(3) == "sum_dd"
    assert finediving_rule(5) == "sum_dd_0.6"
    with pytest.raises(ValueError, match="3, 5 or 7"):
        finediving_rule(4)
    assert judges_needed("mtl_middle3") == 7 and judges_needed("identity") == 1
    assert judges_needed("sum", observed=6) == 6
    with pytest.raises(ValueError):
        judges_needed("mean")
    assert set(RULE_JUDGES) == {"mtl_middle3", "sum_dd", "sum_dd_0.6", "sum", "mean", "identity"}
