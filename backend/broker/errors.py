"""The errors of Redis and RQ that layers above the broker catch, under the broker's names.

Aliases, not wrappers: code inside the broker and RQ itself raise the originals, so an
``except BrokerError`` above catches exactly what ``except RedisError`` caught.
"""

from __future__ import annotations

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError, ReadOnlyError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.sentinel import MasterNotFoundError
from rq.exceptions import DeserializationError, InvalidJobDependency, InvalidJobOperation, NoSuchJobError

__all__ = [
    "BrokenDependency",
    "BrokerError",
    "BrokerUnreachable",
    "LockError",
    "NoSuchJob",
    "RefusedOperation",
    "UndecodableJob",
]

#: Raised when Redis is unreachable or refuses a command (any redis-py error).
BrokerError = RedisError
#: The errors that mean Redis did not answer, as opposed to refusing a command. A failover is
#: one of them: no Sentinel names a master yet (MasterNotFoundError, a ConnectionError too), or
#: the server we reached was demoted and refuses writes (ReadOnlyError; our connections turn it
#: into a ConnectionError and reconnect, see connection.py, but RQ's own may meet it raw).
BrokerUnreachable = (RedisConnectionError, RedisTimeoutError, MasterNotFoundError, ReadOnlyError)
#: Raised by RQ when a job's hash is gone (expired or deleted).
NoSuchJob = NoSuchJobError
#: Raised by RQ for an operation the job's state does not allow (e.g. requeue a job not failed).
RefusedOperation = InvalidJobOperation
#: Raised by RQ for a job whose data another client wrote with another serializer (pickle).
UndecodableJob = DeserializationError
#: Raised by RQ for a job whose dependencies it cannot resolve.
BrokenDependency = InvalidJobDependency
