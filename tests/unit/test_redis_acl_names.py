import pytest

from actors.provisioners.redis_acl import acl_username, key_prefix


@pytest.mark.parametrize("resource", ["redis://target/*", "redis://target/", "redis://target/p*", "redis://target/[p]ay", "redis://target/a?b", "redis://target/a\\b"])
def test_glob_prefix_rejected(resource):
    with pytest.raises(ValueError):
        key_prefix(resource)


def test_plain_prefix_accepted():
    assert key_prefix("redis://target/orders:eu-1") == "orders:eu-1"


@pytest.mark.parametrize(
    ("first", "second"),
    [
        (("alice", "redis://target/orders:1", "read"), ("alice", "redis://target/orders_1", "read")),
        (("alice", "redis://target/x.y", "read"), ("alice.x", "redis://target/y", "read")),
    ],
)
def test_usernames_never_collide(first, second):
    assert acl_username(*first) != acl_username(*second)
