from actors.domain.directory import ApiKeyRing, PrincipalDirectory, ResourceCatalog, hash_api_key

DIRECTORY = PrincipalDirectory.from_config(
    {"principals": [{"id": "alice", "aliases": ["alice@example.com", "Alice.Smith"], "attributes": {"groups": ["eng"]}}]}
)


def test_aliases_map_to_canonical_principal():
    for name in ("alice", "ALICE", "Alice@Example.COM", " alice.smith ", "alice@example.com"):
        assert DIRECTORY.canonical(name) == "alice"


def test_unknown_principal_is_case_folded():
    assert DIRECTORY.canonical("Mallory") == "mallory"


def test_api_key_lookup_by_hash():
    ring = ApiKeyRing.from_config({"keys": [{"id": "k1", "principal": "alice", "scopes": ["request"], "sha256": hash_api_key("secret")}]})
    assert ring.lookup("secret").principal == "alice"
    assert ring.lookup("other") is None


def test_resource_catalog_first_match_then_default():
    catalog = ResourceCatalog.from_config(
        {"resources": [{"pattern": "redis://target/*", "provisioner": "redis-acl"}], "default": {"sensitivity": "unknown"}}
    )
    assert catalog.lookup("redis://target/orders").provisioner == "redis-acl"
    assert catalog.lookup("amazon:1").provisioner == "record"
    assert catalog.lookup("amazon:1").sensitivity == "unknown"
