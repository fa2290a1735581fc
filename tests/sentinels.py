"""A real Redis Sentinel group for tests: one master, one replica and three Sentinels, all
from the redis-server binary the suite already uses, on free ports of 127.0.0.1.

Fast to fail over (down-after-milliseconds 1000, quorum 2), so that a test can SIGKILL the
master and see the replica promoted within a few seconds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.exceptions import RedisError

from backend.dev import processes
from backend.dev.redis_server import EmbeddedRedis, free_port, redis_server_binary

QUORUM = 2
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 2000

Address = tuple[str, int]
HOST = "127.0.0.1"


def _client(address: Address) -> Redis:
    return Redis(*address, socket_connect_timeout=0.5, socket_timeout=2)


def _ask(address: Address, question):
    """``question(client)`` of the server at ``address``, or None when it does not answer."""
    try:
        return question(_client(address))
    except RedisError:
        return None


def start_redis(directory: Path, *args: str, port: int = 0, binary: str | None = None) -> EmbeddedRedis:
    """A redis-server of its own on 127.0.0.1 with extra ``args`` (``--rename-command CONFIG ""``,
    ``--replicaof``...), ready to answer; ``stop()`` it after. ``port`` 0: a free one."""
    port = port or free_port()
    data = Path(directory) / f"redis-{port}"
    data.mkdir(parents=True, exist_ok=True)
    command = [
        binary or redis_server_binary(), "--port", str(port), "--bind", HOST, "--dir", str(data),
        "--appendonly", "no", "--save", "", "--daemonize", "no", "--loglevel", "warning", *args,
    ]  # fmt: skip
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    server = EmbeddedRedis(process=process, port=port, data_dir=data)
    try:
        server.wait_ready()
    except BaseException:
        processes.stop(process, timeout=5)
        raise
    return server


class SentinelGroup:
    """Master, replica and three Sentinels; ``url`` is their ``redis+sentinel://`` REDIS_URL."""

    def __init__(self, directory: Path, master_name: str):
        self.directory = Path(directory)
        self.master_name = master_name
        #: Every redis-server data process by port (master and replicas).
        self.servers: dict[int, subprocess.Popen] = {}
        self.sentinels: dict[int, subprocess.Popen] = {}
        self._killed: Address | None = None

    @classmethod
    def start(cls, directory: Path, master_name: str = "mymaster") -> SentinelGroup:
        """Start the group and wait until every Sentinel sees the replica and the two other Sentinels."""
        group = cls(directory, master_name)
        try:
            master = group._server(free_port())
            group._server(free_port(), replica_of=master)
            group._wait(lambda: group._linked(master), "the replica to sync")
            for _ in range(3):
                group._sentinel(free_port(), master)
            group._wait(group._sentinels_agree, "the Sentinels to find the replica and each other")
        except BaseException:
            group.close()
            raise
        return group

    @property
    def url(self) -> str:
        hosts = ",".join(f"{HOST}:{port}" for port in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master_name}/0"

    def master_address(self) -> Address:
        """The master as the first Sentinel that answers names it."""
        for port in self.sentinels:
            answer = _ask((HOST, port), lambda c: c.sentinel_get_master_addr_by_name(self.master_name))
            if answer:
                host = answer[0].decode() if isinstance(answer[0], bytes) else str(answer[0])
                return host, int(answer[1])
        raise RuntimeError("no Sentinel answers")

    def kill_master(self) -> Address:
        """SIGKILL the master's process; returns its address."""
        address = self.master_address()
        process = self.servers.pop(address[1])
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=10)
        self._killed = address
        return address

    def wait_promoted(self, timeout: float = 30.0) -> Address:
        """Wait until a Sentinel names a new master that answers as a master; its address.

        Raises:
            RuntimeError: none within ``timeout`` seconds.
        """
        old = self._killed
        found: list[Address] = []

        def promoted() -> bool:
            address = self.master_address()
            role = _ask(address, lambda c: c.role())
            if address != old and role and role[0] == b"master":
                found.append(address)
                return True
            return False

        self._wait(promoted, "a replica to be promoted", timeout=timeout)
        return found[-1]

    def restore(self, timeout: float = 30.0) -> None:
        """After ``kill_master``: start the killed server again as a replica of the new master, and
        wait until the Sentinels count it as a live replica (the group can fail over again)."""
        if self._killed is None:
            return
        master = self.wait_promoted(timeout)
        port = self._killed[1]
        self._killed = None
        self._server(port, replica_of=master)
        self._wait(lambda: self._linked(master), "the old master to sync as a replica", timeout=timeout)
        self._wait(self._sentinels_agree, "the Sentinels to count the replica again", timeout=timeout)

    def close(self) -> None:
        for process in [*self.sentinels.values(), *self.servers.values()]:
            processes.stop(process, timeout=5)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
        self.sentinels.clear()
        self.servers.clear()

    # -- the processes -------------------------------------------------------------------------

    def _server(self, port: int, replica_of: Address | None = None) -> Address:
        # No wait before a full sync (Redis 7 waits 5 s for more replicas to share a diskless one).
        args = ["--repl-diskless-sync-delay", "0"]
        if replica_of:
            args += ["--replicaof", replica_of[0], str(replica_of[1])]
        self.servers[port] = start_redis(self.directory, *args, port=port).process
        return HOST, port

    def _sentinel(self, port: int, master: Address) -> None:
        # Sentinel rewrites its configuration file as it learns: one writable file each.
        config = self.directory / f"sentinel-{port}.conf"
        config.write_text(
            f"port {port}\nbind {HOST}\ndaemonize no\ndir {self.directory}\nloglevel warning\n"
            f"sentinel monitor {self.master_name} {master[0]} {master[1]} {QUORUM}\n"
            f"sentinel down-after-milliseconds {self.master_name} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {self.master_name} {FAILOVER_TIMEOUT_MS}\n"
            f"sentinel parallel-syncs {self.master_name} 1\n"
        )
        process = subprocess.Popen(
            [redis_server_binary(), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self.sentinels[port] = process
        EmbeddedRedis(process=process, port=port, data_dir=self.directory).wait_ready()

    # -- waits ---------------------------------------------------------------------------------

    def _linked(self, master: Address) -> bool:
        info = _ask(master, lambda c: c.info("replication")) or {}
        return any(isinstance(v, dict) and v.get("state") == "online" for k, v in info.items() if k.startswith("slave"))

    def _sentinels_agree(self) -> bool:
        for port in self.sentinels:
            state = _ask((HOST, port), lambda c: c.sentinel_master(self.master_name))
            if not state or state["num-other-sentinels"] < len(self.sentinels) - 1:
                return False
            replicas = _ask((HOST, port), lambda c: c.sentinel_slaves(self.master_name)) or []
            if not any(not r["is_sdown"] and not r["is_odown"] for r in replicas):
                return False
        return True

    def _wait(self, probe, what: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if probe():
                return
            time.sleep(0.1)
        raise RuntimeError(f"Sentinel group: waited {timeout:.0f} s for {what}")
