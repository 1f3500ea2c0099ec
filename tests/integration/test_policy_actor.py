"""PolicyActor on a local Ray: decisions, review eligibility and bundle switching."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from actors.policy import PolicyBundleError  # noqa: E402
from actors.policy.actor import PolicyActor  # noqa: E402

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO / "configs" / "policies"
GLOBAL_MAX_S = 43200

REQUEST = {
    "principal": "alice",
    "principal_attributes": {"groups": ["payments"]},
    "resource": "redis://prod/cache",
    "resource_attributes": {"owner_team": "platform", "sensitivity": "low"},
    "role": "read",
    "duration_s": 3600,
    "risk_score": 12.0,
    "device_posture": "managed",
    "hour_utc": 10,
    "source": "api",
}


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=200 * 1024 * 1024)
    yield
    ray.shutdown()


@pytest.fixture
def policy_actor(ray_cluster, tmp_path):
    bundle_dir = shutil.copytree(DEFAULT_BUNDLE, tmp_path / "policies")
    actor = ray.remote(PolicyActor).options(max_restarts=-1, max_task_retries=-1, num_cpus=0).remote(
        str(bundle_dir), GLOBAL_MAX_S, 0
    )
    yield actor
    ray.kill(actor)


def test_actor_decides_batch(policy_actor):
    items = [REQUEST, {**REQUEST, "risk_score": 60.0}, {**REQUEST, "risk_score": 99.0}]
    results = ray.get(policy_actor.decide.remote(items), timeout=60)
    assert [result["effect"] for result in results] == ["allow", "review", "deny"]
    version = ray.get(policy_actor.version.remote(), timeout=60)
    assert all(result["policy_version"] == version for result in results)
    assert results[0]["max_duration_s"] == 28800
    assert results[1]["required_approvals"] == 1
    assert isinstance(results[2]["reasons"], list)


def test_actor_decides_packed_batch(policy_actor):
    items = [REQUEST, {**REQUEST, "risk_score": 60.0}, REQUEST, {**REQUEST, "risk_score": 99.0}]
    expected = ray.get(policy_actor.decide.remote(items), timeout=60)
    packed = ray.get(policy_actor.decide_packed.remote(pickle.dumps(items)), timeout=60)
    table, indexes = pickle.loads(packed)
    assert [table[index] for index in indexes] == expected
    assert len(table) == 3
    assert indexes[0] == indexes[2]


def test_actor_rejects_invalid_item(policy_actor):
    with pytest.raises(ValueError, match="item 1: role must be one of"):
        ray.get(policy_actor.decide.remote([REQUEST, {**REQUEST, "role": "owner"}]), timeout=60)


def test_actor_may_review(policy_actor):
    result = ray.get(policy_actor.may_review.remote("erin", {"groups": ["approvers"]}, REQUEST), timeout=60)
    assert result["eligible"] is True
    assert result["reasons"] == ["eligible reviewer by reviewer-approvers-group"]
    own = ray.get(policy_actor.may_review.remote("alice", {"groups": ["approvers"]}, REQUEST), timeout=60)
    assert own["eligible"] is False


def test_broken_bundle_keeps_old_version(policy_actor, tmp_path):
    old_version = ray.get(policy_actor.version.remote(), timeout=60)
    broken = Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "broken"))
    guardrails = broken / "guardrails.cedar"
    guardrails.write_text(guardrails.read_text().replace("context.risk_tenths >= 950", "context.risk >= 950"))

    with pytest.raises(PolicyBundleError, match="guardrails.cedar: policy risk-too-high fails schema validation") as raised:
        ray.get(policy_actor.load_bundle.remote(str(broken)), timeout=60)
    assert len(raised.value.problems) == 1
    assert ray.get(policy_actor.version.remote(), timeout=60) == old_version
    assert ray.get(policy_actor.decide.remote([REQUEST]), timeout=60)[0]["policy_version"] == old_version


def test_new_bundle_switches_and_drops_cache(policy_actor, tmp_path):
    assert ray.get(policy_actor.decide.remote([REQUEST]), timeout=60)[0]["effect"] == "allow"
    stricter = Path(shutil.copytree(DEFAULT_BUNDLE, tmp_path / "stricter"))
    (stricter / "bundle.yaml").write_text('name: stricter\nversion: "2.0.0"\n')
    shutil.rmtree(stricter / "tests")
    (stricter / "freeze.cedar").write_text(
        '@id("change-freeze")\n@reason("change freeze")\n'
        'forbid (principal, action == Action::"request", resource);\n'
    )

    new_version = ray.get(policy_actor.load_bundle.remote(str(stricter)), timeout=60)
    assert new_version.startswith("2.0.0+")
    result = ray.get(policy_actor.decide.remote([REQUEST]), timeout=60)[0]
    assert result["effect"] == "deny"
    assert result["reasons"] == ["denied by change-freeze: change freeze"]
    assert result["policy_version"] == new_version


def test_restarted_actor_reloads_bundle(policy_actor):
    version = ray.get(policy_actor.version.remote(), timeout=60)
    ray.kill(policy_actor, no_restart=False)
    # max_task_retries=-1 makes this call wait for the restarted actor instead of failing.
    result = ray.get(policy_actor.decide.remote([REQUEST]), timeout=60)[0]
    assert result["effect"] == "allow"
    assert result["policy_version"] == version


def test_channel_matches_ray_after_restart(ray_cluster, tmp_path):
    import asyncio
    import os
    import stat

    from cluster.channel import Channel, ChannelLost, served

    bundle_dir = shutil.copytree(DEFAULT_BUNDLE, tmp_path / "policies")
    actor = ray.remote(served(PolicyActor)).options(max_restarts=-1, max_task_retries=-1, num_cpus=0).remote(
        str(bundle_dir), GLOBAL_MAX_S, 0
    )
    items = [REQUEST, {**REQUEST, "risk_score": 60.0}]

    async def connected(channel: Channel) -> None:
        async with asyncio.timeout(60):
            while not channel.connected:
                channel.connect_soon()
                await asyncio.sleep(0.05)

    async def scenario() -> None:
        channel = Channel(actor, ray.get_runtime_context().get_node_id())
        await connected(channel)
        _, path = await actor.channel_address.remote()
        assert os.path.dirname(path).endswith("/sockets/jg")
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
        through_ray = await actor.decide.remote(items)
        assert await channel.call("decide", items) == through_ray
        with pytest.raises(ValueError, match="not served"):
            await channel.call("load_bundle", str(bundle_dir))

        ray.kill(actor, no_restart=False)
        async with asyncio.timeout(30):
            while channel.connected:
                await asyncio.sleep(0.01)
        with pytest.raises(ChannelLost):
            await channel.call("decide", items)
        # The restarted actor serves a new socket, which the channel finds through Ray.
        await connected(channel)
        assert await channel.call("decide", items) == through_ray

    try:
        asyncio.run(scenario())
    finally:
        ray.kill(actor)
