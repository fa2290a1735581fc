"""A real forking worker whose work-horse alone loses Redis right after its first task returned
(tests only): the horse's connection is pointed at a closed port, the parent's stays
good, as when Redis is back (a restart, a promoted replica) by the time the parent reads the end.
"""

from __future__ import annotations

import os
import sys

from backend.dev.redis_server import free_port
from backend.runner import worker as runtime

MARK = os.environ["REDIS_DIES_MARK"]
_ended = runtime.JobServiceWorker.handle_execution_ended


def handle_execution_ended(self, job, queue, heartbeat_ttl):
    if self.is_horse and not os.path.exists(MARK):
        open(MARK, "w").close()  # noqa: SIM115
        dead = free_port()  # nothing listens there
        for client in {id(c): c for c in (self.connection, job.connection)}.values():
            pool = client.connection_pool
            pool.disconnect()
            pool.connection_kwargs["port"] = dead
            for connection in [*pool._available_connections, *pool._in_use_connections]:
                connection.port = dead
    _ended(self, job, queue, heartbeat_ttl)


runtime.JobServiceWorker.handle_execution_ended = handle_execution_ended

if __name__ == "__main__":
    sys.exit(runtime.main(sys.argv[1:]))
