#!/bin/sh
# One Redis server of the Sentinel group (docker-compose.sentinel.yml): the master or a replica.
#
# Its role is asked of the Sentinels at every start, not written down once: after a failover
# the old master, restarted, must come back as a replica of the new one (two masters would
# split the queues, and a replica told to follow a stale master throws its own data away). A
# server that has data therefore never picks its role itself: it waits for a Sentinel's answer
# (REDIS_SENTINEL_WAIT seconds, then exits so that its container is started again and asks
# again). Only a first start (an empty data directory: nothing to lose) falls back to
# REDIS_INITIAL_MASTER when no Sentinel answers within REDIS_FIRST_START_WAIT seconds. The
# passwords come from the environment into a config file only Redis reads (mode 0600): never
# into a process's arguments, where ps and /proc show them.
#
# Environment: REDISCLI_AUTH (the servers' password: requirepass and masterauth),
# REDIS_SENTINEL_PASSWORD (the Sentinels' requirepass; may be empty), REDIS_ANNOUNCE_HOST (this
# server's name on the network), REDIS_INITIAL_MASTER (host:port), REDIS_SENTINELS
# (host:port,...), REDIS_MASTER_NAME, REDIS_MAXMEMORY, REDIS_SENTINEL_WAIT (60),
# REDIS_FIRST_START_WAIT (10). Outside the image (tests): REDIS_PORT,
# REDIS_BIND, REDIS_DATA_DIR, REDIS_CONF, REDIS_SERVER and REDIS_CLI.
set -eu
umask 077

port=${REDIS_PORT:-6379}
me="${REDIS_ANNOUNCE_HOST:?}:$port"
conf=${REDIS_CONF:-/tmp/redis.conf}
cli=${REDIS_CLI:-redis-cli}

# Asks a Sentinel, with its password from the environment (never an argument); none when the
# Sentinels require none (an empty REDISCLI_AUTH would still send AUTH, and fail).
ask() {
    if [ -n "${REDIS_SENTINEL_PASSWORD:-}" ]; then
        REDISCLI_AUTH="$REDIS_SENTINEL_PASSWORD" timeout 3 $cli --no-auth-warning -h "$1" -p "$2" \
            sentinel get-master-addr-by-name "${REDIS_MASTER_NAME:?}"
    else
        (unset REDISCLI_AUTH; exec timeout 3 $cli -h "$1" -p "$2" sentinel get-master-addr-by-name "${REDIS_MASTER_NAME:?}")
    fi
}

# Where the Sentinels say the master is: the first one that answers with a host and a port.
ask_all() {
    for sentinel in $(printf '%s' "${REDIS_SENTINELS:?}" | tr ',' ' '); do
        reply=$(ask "${sentinel%:*}" "${sentinel##*:}" 2>/dev/null) || continue
        set -- $reply
        if [ $# -eq 2 ] && [ -n "$2" ] && [ -z "$(printf '%s' "$2" | tr -d 0-9)" ]; then
            printf '%s:%s' "$1" "$2"
            return 0
        fi
    done
    return 1
}

data=${REDIS_DATA_DIR:-/data}
has_data=""
for file in appendonlydir appendonly.aof dump.rdb; do
    [ ! -e "$data/$file" ] || has_data=1
done
if [ -n "$has_data" ]; then wait=${REDIS_SENTINEL_WAIT:-60}; else wait=${REDIS_FIRST_START_WAIT:-10}; fi
deadline=$(($(date +%s) + wait))
until master=$(ask_all); do
    if [ "$(date +%s)" -ge "$deadline" ]; then
        if [ -n "$has_data" ]; then
            echo "no Sentinel of ${REDIS_SENTINELS} answered within ${wait} s: this server has data, so it does not pick its role itself; exiting to be started again" >&2
            exit 1
        fi
        master=${REDIS_INITIAL_MASTER:?}
        break
    fi
    sleep 0.5
done

quote() { printf '%s' "$1" | sed 's/[\\"]/\\&/g'; }
pw=$(quote "${REDISCLI_AUTH:?}")
{
    printf 'port %s\n' "$port"
    [ -z "${REDIS_BIND:-}" ] || printf 'bind %s\n' "$REDIS_BIND"
    printf 'dir "%s"\n' "$(quote "$data")"
    printf 'requirepass "%s"\nmasterauth "%s"\n' "$pw" "$pw"
    # Replicas and Sentinels name this server by its network name, not its container address,
    # which changes when the container is recreated.
    printf 'replica-announce-ip "%s"\n' "$(quote "$REDIS_ANNOUNCE_HOST")"
    printf 'appendonly yes\nappendfsync everysec\n'
    # One replica at a time: nothing to gain from Redis 7's 5 s wait for more before a full sync,
    # which would only leave the group without a live copy for 5 s longer after each failover.
    printf 'repl-diskless-sync-delay 0\n'
    printf 'maxmemory %s\nmaxmemory-policy noeviction\n' "${REDIS_MAXMEMORY:-0}"
    [ "$master" = "$me" ] || printf 'replicaof %s %s\n' "${master%:*}" "${master##*:}"
} > "$conf"
chown redis:redis "$conf" 2>/dev/null || true
exec ${REDIS_SERVER:-docker-entrypoint.sh redis-server} "$conf"
