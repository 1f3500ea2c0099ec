"""The actor channel on a real Unix socket, without Ray: results, errors, lost connections."""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from cluster.channel import Channel, ChannelLost, ChannelServer
from jitgate.errors import Conflict


class Target:
    def __init__(self) -> None:
        self.release = asyncio.Event()

    def double(self, value: int) -> int:
        return 2 * value

    async def later(self, value: str) -> str:
        await asyncio.sleep(0)
        return value.upper()

    async def blocked(self) -> str:
        await self.release.wait()
        return "released"

    def conflict(self) -> None:
        raise Conflict("an active grant exists", grant_id="g-1")

    def secret(self) -> str:
        return "not served"


class FakeHandle:
    """Fake Ray actor handle, whose `channel_address.remote()` returns an awaitable."""

    def __init__(self, server: ChannelServer, node_id: str = "node-a") -> None:
        self.server = server
        self.node_id = node_id
        self.lookups = 0
        self.channel_address = SimpleNamespace(remote=self._address)

    async def _address(self) -> tuple[str, str]:
        self.lookups += 1
        return self.node_id, await self.server.address()


REPO = Path(__file__).resolve().parents[2]
SERVED = frozenset({"double", "later", "blocked", "conflict"})


async def wait_until(condition, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


async def connected_channel(target: Target, node_id: str = "node-a") -> tuple[Channel, FakeHandle]:
    handle = FakeHandle(ChannelServer(target, SERVED, "test"))
    channel = Channel(handle, node_id)
    channel.connect_soon()
    await wait_until(lambda: channel.connected)
    return channel, handle


def test_channel_calls_sync_and_async_methods():
    async def scenario():
        channel, _ = await connected_channel(Target())
        results = await asyncio.gather(channel.call("double", 21), channel.call("later", "ok"), channel.call("double", 1))
        assert results == [42, "OK", 2]

    asyncio.run(scenario())


def test_channel_socket_mode_is_0600():
    async def scenario():
        _, handle = await connected_channel(Target())
        mode = os.stat(await handle.server.address()).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600

    asyncio.run(scenario())


def test_channel_raises_target_errors():
    async def scenario():
        channel, _ = await connected_channel(Target())
        with pytest.raises(Conflict) as raised:
            await channel.call("conflict")
        assert raised.value.details == {"grant_id": "g-1"}
        # The connection is still usable after an error.
        assert await channel.call("double", 2) == 4

    asyncio.run(scenario())


def test_channel_rejects_unserved_methods():
    async def scenario():
        channel, _ = await connected_channel(Target())
        with pytest.raises(ValueError, match="'secret' is not served"):
            await channel.call("secret")

    asyncio.run(scenario())


def test_channel_slow_call_blocks_nothing():
    async def scenario():
        target = Target()
        channel, _ = await connected_channel(target)
        slow = asyncio.create_task(channel.call("blocked"))
        assert await channel.call("double", 5) == 10
        assert not slow.done()
        target.release.set()
        assert await slow == "released"

    asyncio.run(scenario())


SERVER_PROCESS = """
import asyncio, sys
from cluster.channel import ChannelServer

class Target:
    async def blocked(self):
        await asyncio.Event().wait()

async def main():
    path = await ChannelServer(Target(), frozenset({"blocked"}), "killed").address()
    print(path, flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_channel_lost_when_process_dies():
    async def scenario():
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", SERVER_PROCESS, stdout=asyncio.subprocess.PIPE, cwd=REPO,
        )
        try:
            path = (await asyncio.wait_for(process.stdout.readline(), 30)).decode().strip()
            handle = SimpleNamespace(channel_address=SimpleNamespace(remote=lambda: _address("node-a", path)))
            channel = Channel(handle, "node-a")
            channel.connect_soon()
            await wait_until(lambda: channel.connected)
            pending = asyncio.create_task(channel.call("blocked"))
            await asyncio.sleep(0.05)
            assert not pending.done()
            process.kill()
            with pytest.raises(ChannelLost):
                await asyncio.wait_for(pending, 5)
            assert not channel.connected
            with pytest.raises(ChannelLost):
                await channel.call("blocked")
        finally:
            if process.returncode is None:
                process.kill()
            await process.wait()

    asyncio.run(scenario())


async def _address(node_id: str, path: str) -> tuple[str, str]:
    return node_id, path


def test_channel_reconnects_after_drop():
    async def scenario():
        channel, handle = await connected_channel(Target())
        channel._writer.transport.abort()
        await wait_until(lambda: not channel.connected)
        with pytest.raises(ChannelLost):
            await channel.call("double", 1)
        channel.connect_soon()
        await wait_until(lambda: channel.connected)
        assert await channel.call("double", 3) == 6
        assert handle.lookups == 2

    asyncio.run(scenario())


def test_channel_skips_remote_node():
    async def scenario():
        handle = FakeHandle(ChannelServer(Target(), SERVED, "test"), node_id="node-b")
        channel = Channel(handle, "node-a")
        channel.connect_soon()
        await wait_until(lambda: handle.lookups == 1)
        await asyncio.sleep(0.05)
        assert not channel.connected
        channel.connect_soon()
        await asyncio.sleep(0.05)
        assert handle.lookups == 1
        with pytest.raises(ChannelLost):
            await channel.call("double", 1)

    asyncio.run(scenario())


def test_channel_backs_off_after_failed_lookup():
    async def scenario():
        handle = FakeHandle(ChannelServer(Target(), SERVED, "test"))

        async def gone() -> tuple[str, str]:
            handle.lookups += 1
            raise RuntimeError("actor restarting")

        handle.channel_address = SimpleNamespace(remote=gone)
        channel = Channel(handle, "node-a")
        channel.connect_soon()
        await wait_until(lambda: handle.lookups == 1)
        await asyncio.sleep(0.05)
        channel.connect_soon()
        await asyncio.sleep(0.05)
        assert handle.lookups == 1
        assert not channel.connected

    asyncio.run(scenario())


def test_dead_sockets_removed_live_kept(tmp_path):
    import subprocess

    from cluster.channel import _remove_dead_sockets

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, check=True)
    dead_pid = int(finished.stdout)
    for name in (f"p-{dead_pid}", f"g-{os.getpid()}", "notes"):
        (tmp_path / name).write_text("")

    _remove_dead_sockets(str(tmp_path))

    assert sorted(path.name for path in tmp_path.iterdir()) == sorted([f"g-{os.getpid()}", "notes"])


def test_socket_dir_outside_ray_is_private():
    from cluster.channel import _socket_path

    path = _socket_path("t")
    mode = os.stat(os.path.dirname(path)).st_mode
    assert stat.S_IMODE(mode) == 0o700
    assert os.path.basename(path) == f"t-{os.getpid()}"


def test_channel_skips_actor_without_channel():
    async def scenario():
        handle = SimpleNamespace()
        channel = Channel(handle, "node-a")
        channel.connect_soon()
        await asyncio.sleep(0.05)
        assert not channel.connected
        lookups = []
        handle.channel_address = SimpleNamespace(remote=lambda: lookups.append(1) or _address("node-a", "/nonexistent"))
        channel.connect_soon()
        await asyncio.sleep(0.05)
        assert not channel.connected
        assert lookups == []

    asyncio.run(scenario())
