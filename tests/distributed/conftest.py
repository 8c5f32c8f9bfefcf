"""A Dask LocalCluster of 2 worker processes with 1 thread each, shared by the module's
tests (starting one takes seconds)."""

from __future__ import annotations

import pytest

pytest.importorskip("distributed")


@pytest.fixture(scope="package")
def client():
    from cellstack.distributed.cluster import open_client

    with open_client(2) as c:
        yield c


@pytest.fixture
def one_thread():
    """torch on one thread in this process, as on each worker: the same float sums, so
    results can be compared exactly."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
