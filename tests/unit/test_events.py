import pytest

from cluster.events import EventSource, load_sources, map_event, sign, verify
from jitgate.errors import InvalidInput, NotFound, Unauthenticated

SOURCE = EventSource(
    name="ci", secret=b"s3cret", max_age_s=300,
    fields={
        "principal": {"path": "pipeline.account"}, "resource": {"path": "target"}, "role": {"value": "write"},
        "duration_s": {"path": "timeout_s"}, "reason": {"path": "url"}, "delivery_id": {"path": "id"},
    },
)
BODY = b'{"pipeline": {"account": "deploy-bot"}, "target": "redis://target/orders", "timeout_s": 900, "url": "https://ci/1", "id": "d1"}'


def test_valid_signature_accepted():
    signature = sign(b"s3cret", "1000", BODY)
    assert verify(SOURCE, "ci", timestamp="1000", signature=signature, body=BODY, now_s=1100) is SOURCE


@pytest.mark.parametrize(
    ("timestamp", "signature", "now_s"),
    [
        ("1000", "sha256=" + "0" * 64, 1000),  # wrong signature
        ("1000", None, 1000),  # missing signature
        (None, "sha256=x", 1000),  # missing timestamp
        ("1000", "same", 1301),  # too old
        ("abc", "same", 1000),  # not Unix seconds
    ],
)
def test_bad_signature_rejected(timestamp, signature, now_s):
    if signature == "same":
        signature = sign(b"s3cret", timestamp or "", BODY)
    with pytest.raises(Unauthenticated):
        verify(SOURCE, "ci", timestamp=timestamp, signature=signature, body=BODY, now_s=now_s)


def test_signature_covers_timestamp():
    signature = sign(b"s3cret", "1000", BODY)
    with pytest.raises(Unauthenticated):
        verify(SOURCE, "ci", timestamp="1001", signature=signature, body=BODY, now_s=1001)


def test_unknown_source_not_found():
    with pytest.raises(NotFound):
        verify(None, "nope", timestamp="1", signature="x", body=b"{}", now_s=1)


def test_map_event_paths_and_constants():
    import json

    mapped = map_event(SOURCE, json.loads(BODY))
    assert mapped == {"principal": "deploy-bot", "resource": "redis://target/orders", "role": "write",
                      "duration_s": 900, "reason": "https://ci/1", "delivery_id": "d1"}


def test_map_event_missing_path_names_it():
    with pytest.raises(InvalidInput) as raised:
        map_event(SOURCE, {"pipeline": {}, "target": "x", "timeout_s": 1, "url": "u"})
    assert raised.value.details["field"] == "pipeline.account"


def test_source_without_secret_disabled():
    config = {"sources": {"ci": {"fields": SOURCE.fields}}}
    assert load_sources(config, {}) == {}
    assert "ci" in load_sources(config, {"ci": "x"})
