from actors.domain.audit import GENESIS_HASH, canonical_json, chain_hash, verify_chain


def build_chain(count: int) -> list[tuple[str, str, str]]:
    events, prev = [], GENESIS_HASH
    for i in range(count):
        event = canonical_json({"n": i, "to_state": "active"})
        digest = chain_hash(prev, event)
        events.append((event, prev, digest))
        prev = digest
    return events


def test_intact_chain_verifies():
    assert verify_chain(build_chain(5)) is None


def test_changed_event_breaks_chain():
    events = build_chain(5)
    event, prev, digest = events[2]
    events[2] = (event.replace("active", "revoked"), prev, digest)
    assert verify_chain(events) == 2


def test_removed_event_breaks_chain():
    events = build_chain(5)
    del events[1]
    assert verify_chain(events) == 1
