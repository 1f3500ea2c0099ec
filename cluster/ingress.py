"""Serve ingress: the v1 API app on a Ray Serve deployment.

`build_app(args)` is the application builder used by `jitgate up` and by `configs/serve.yaml`;
args are `Settings` fields as JSON values.
"""

from __future__ import annotations

import asyncio
import logging

from ray import serve

from cluster.app import create_app
from cluster.backends import RayBackends
from cluster.catalogs import load_catalogs, load_event_sources
from cluster.replica_state import current_replica_id, current_service, set_replica
from cluster.service import AccessService
from cluster.settings import Settings

logger = logging.getLogger("jitgate.cluster")

api = create_app(current_service, replica_id=current_replica_id)


@serve.deployment(
    name="ingress",
    health_check_period_s=1,
    health_check_timeout_s=5,
    graceful_shutdown_timeout_s=5,
    max_ongoing_requests=256,
)
@serve.ingress(api)
class Ingress:
    def __init__(self, settings: dict) -> None:
        self.settings = Settings(**settings)
        directory, catalog, keyring = load_catalogs(self.settings)
        backends = RayBackends(self.settings)
        self.service = AccessService(
            self.settings, backends, directory=directory, catalog=catalog, keyring=keyring,
            event_sources=load_event_sources(self.settings),
        )
        set_replica(self.service, serve.get_replica_context().replica_id.unique_id)
        asyncio.get_event_loop().create_task(self.service.start())

    async def check_health(self) -> None:
        # Liveness of this replica only: a Redis outage must not make Serve replace every replica.
        return None


def build_app(args: dict) -> serve.Application:
    settings = Settings(**args)
    return Ingress.options(num_replicas=settings.ingress_replicas).bind(settings.model_dump(mode="json"))
