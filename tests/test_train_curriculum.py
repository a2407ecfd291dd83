"""The uncertainty-guided curriculum schedule."""

import numpy as np

from udaqa_pipeline.engine.curriculum import Curriculum, select


def test_schedule_start_patience_step_cap():
    c = Curriculum(start=0.4, step=0.2, patience=3)
    fr = [c.end_epoch(10.0)]  # after epoch 1 (all samples): next trains on 40%
    assert fr == [0.4]
    fr += [c.end_epoch(l) for l in (5.0, 4.0, 4.5, 4.2, 4.1)]  # 3 epochs without beating 4.0
    assert fr == [0.4, 0.4, 0.4, 0.4, 0.4, 0.6]
    fr2 = [c.end_epoch(l) for l in (3.0, 3.0, 3.0, 3.0)]  # fresh best 3.0, then 3 non-improvements
    assert fr2 == [0.6, 0.6, 0.6, 0.8]
    for _ in range(20):
        c.end_epoch(100.0)
    assert c.fraction == 1.0


def test_improvement_resets_patience_and_state_roundtrip():
    c = Curriculum()
    c.end_epoch(1.0)
    for l in (5.0, 6.0, 4.0, 6.0, 6.0):
        assert c.end_epoch(l) == 0.4
    c2 = Curriculum.from_state(c.state_dict())
    assert c2 == c
    assert c.end_epoch(7.0) == 0.6 and c2.end_epoch(7.0) == 0.6


def test_disabled_always_full():
    c = Curriculum(enabled=False)
    assert [c.end_epoch(1.0) for _ in range(3)] == [1.0, 1.0, 1.0]


def test_select_lowest_uncertainty():
    u = np.array([0.5, -1.0, 2.0, 0.1, 0.0])
    assert select(u, 0.4).tolist() == [1, 4]
    assert select(u, 0.6).tolist() == [1, 3, 4]
    assert select(u, 1.0).tolist() == [0, 1, 2, 3, 4]
    assert select(u, 0.01).tolist() == [1, 4]  # never a batch of one: two at least
    assert select(u[:1], 0.01).tolist() == [0]
