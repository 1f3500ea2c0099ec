"""A local Ray runtime for the fault-tolerance tests (actors only, no Serve)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def ray_runtime():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024, namespace="jitgate-fault",
             log_to_driver=False)
    yield ray
    ray.shutdown()
