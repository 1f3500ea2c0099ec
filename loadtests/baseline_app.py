"""The jitgate API without Ray: one uvicorn worker serving `cluster.app.create_app`.

The app runs the same domain core as a cluster (validation, risk model, Cedar policies, the
policy decision cache, the check cache, Redis writes and their pipelining), but calls the
actor classes in-process through `LocalBackends` instead of through Ray. The benchmark
compares the cluster against it.

    python -m loadtests.baseline_app --state-dir /tmp/jgb-base --port 8100

starts two embedded Redis servers under the state dir (the ledger's and the redis-acl
target), writes local API keys there as `jitgate up` does, and serves on 127.0.0.1 until
SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from cluster.app import create_app
from cluster.backends import LocalBackends
from cluster.catalogs import load_catalogs
from cluster.credentials import ensure_local_keys
from cluster.redis_server import RedisProcess, start_local_redis
from cluster.service import AccessService
from cluster.settings import Settings

logger = logging.getLogger("jitgate.loadtests")

BASELINE_REPLICA_ID = "baseline"


def create_baseline_app(settings: Settings) -> FastAPI:
    """Build the API app around an `AccessService` with `LocalBackends`.

    The service is created at start-up inside the server's event loop, because the ledger
    starts its background tasks in its constructor.
    """
    state: dict[str, AccessService] = {}

    def current_service() -> AccessService:
        return state["service"]

    app = create_app(current_service, replica_id=lambda: BASELINE_REPLICA_ID)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        directory, catalog, keyring = load_catalogs(settings)
        service = AccessService(settings, LocalBackends(settings), directory=directory, catalog=catalog, keyring=keyring)
        state["service"] = service
        await service.start()
        await service.ready()
        # As in the cluster's ingress replicas: start-up objects stay out of garbage collection.
        gc.collect()
        gc.freeze()
        logger.info("baseline app ready with %d ledger shards and %d policy shards", settings.ledger_shards, settings.policy_shards)
        yield

    app.router.lifespan_context = lifespan
    return app


def start_redis_servers(state_dir: Path, settings: Settings) -> tuple[RedisProcess, RedisProcess]:
    """Start the ledger's Redis and the target Redis under `state_dir`."""
    ledger = start_local_redis(state_dir, "redis", settings.redis_fsync)
    target = start_local_redis(state_dir, "target", settings.redis_fsync)
    return ledger, target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtests.baseline_app", description=__doc__.split("\n\n")[0])
    parser.add_argument("--state-dir", type=Path, required=True, help="Directory for Redis data, logs and API keys.")
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1.")
    options = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    state_dir = options.state_dir.resolve()
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings = Settings(state_dir=state_dir, dashboard=False, http_port=options.port)
    ledger_redis, target_redis = start_redis_servers(state_dir, settings)
    try:
        settings = settings.model_copy(update={"redis_url": ledger_redis.url, "target_redis_url": target_redis.url})
        ensure_local_keys(state_dir, settings.resolved_api_keys_file, f"http://127.0.0.1:{options.port}")
        app = create_baseline_app(settings)
        # uvicorn sends a caught SIGTERM again after its graceful shutdown; exiting through
        # SystemExit then still runs the `finally` below, which stops the Redis servers.
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
        # One worker and no access log, as a plain production uvicorn would run; uvloop and
        # httptools are picked automatically when installed.
        uvicorn.run(app, host="127.0.0.1", port=options.port, workers=1, access_log=False, log_level="warning")
    finally:
        target_redis.stop()
        ledger_redis.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
