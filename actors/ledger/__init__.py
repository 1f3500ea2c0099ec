"""GrantLedger: requests, reviews and grants of the principals of one shard, persisted in Redis."""

import zlib


def ledger_shard(principal: str, shards: int) -> int:
    """Stable shard of a canonical principal id."""
    return zlib.crc32(principal.encode()) % shards
