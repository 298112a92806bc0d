"""e2e fixtures: a Cluster of real processes on the session's NATS and a fresh database."""

from __future__ import annotations

import pytest

from tests.e2e.cluster import Cluster


@pytest.fixture
def cluster(processes, nats_url, database_url) -> Cluster:
    return Cluster(processes, nats_url, database_url)
