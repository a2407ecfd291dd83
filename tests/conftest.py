"""Shared test fixtures."""

import pytest
import torch


@pytest.fixture
def one_thread():
    """Tiny models: one intra-op thread. On a shared, loaded 2-core machine two spinning OpenMP
    threads made a tiny conv3d step ~50x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
