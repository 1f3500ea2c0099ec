"""GrantLedger: requests, reviews and grants of the principals of one shard, persisted in Redis."""

import zlib
from collections.abc import Sequence

import numpy as np


def ledger_shard(principal: str, shards: int) -> int:
    """Stable shard of a canonical principal id."""
    return zlib.crc32(principal.encode()) % shards


def ledger_shards(principals: Sequence[str], shards: int) -> np.ndarray:
    """Return `ledger_shard` of each canonical principal id as an int64 array."""
    if shards == 1:
        return np.zeros(len(principals), np.int64)
    checksums = np.fromiter(map(zlib.crc32, map(str.encode, principals)), np.int64, count=len(principals))
    return checksums % shards
