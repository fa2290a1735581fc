#!/bin/sh
# One Redis Sentinel of the group (docker-compose.sentinel.yml).
#
# Sentinel rewrites its config file as it learns (the current master, the replicas, the other
# Sentinels, the epoch), so the file lives in the volume and is written from scratch only on
# the first start: a restarted Sentinel keeps following the master it last knew. The password
# lines are written again at every start, from the environment (a changed password takes
# effect on restart), into that file only (mode 0600), never into a process's arguments.
#
# Environment: REDIS_MASTER_PASSWORD (the servers' password), REDISCLI_AUTH (this Sentinel's
# requirepass, REDIS_SENTINEL_PASSWORD in .env; the healthcheck's redis-cli reads it too),
# REDIS_ANNOUNCE_HOST (this Sentinel's name on the network), REDIS_INITIAL_MASTER (host:port),
# REDIS_MASTER_NAME, SENTINEL_QUORUM, SENTINEL_DOWN_AFTER_MS, SENTINEL_FAILOVER_TIMEOUT_MS.
# Outside the image (tests): SENTINEL_PORT, REDIS_BIND, REDIS_DATA_DIR and REDIS_SERVER.
set -eu
umask 077

dir=${REDIS_DATA_DIR:-/data}
conf="$dir/sentinel.conf"
name=${REDIS_MASTER_NAME:?}
quote() { printf '%s' "$1" | sed 's/[\\"]/\\&/g'; }

if [ ! -s "$conf" ]; then
    initial=${REDIS_INITIAL_MASTER:?}
    {
        printf 'port %s\n' "${SENTINEL_PORT:-26379}"
        [ -z "${REDIS_BIND:-}" ] || printf 'bind %s\n' "$REDIS_BIND"
        printf 'dir "%s"\n' "$(quote "$dir")"
        # Names, not container addresses: clients are handed "redis-replica:6379" after a
        # failover, which Docker's DNS answers whatever address the container has now.
        printf 'sentinel resolve-hostnames yes\nsentinel announce-hostnames yes\n'
        printf 'sentinel announce-ip "%s"\n' "$(quote "${REDIS_ANNOUNCE_HOST:?}")"
        printf 'sentinel monitor %s %s %s %s\n' "$name" "${initial%:*}" "${initial##*:}" "${SENTINEL_QUORUM:-2}"
        printf 'sentinel down-after-milliseconds %s %s\n' "$name" "${SENTINEL_DOWN_AFTER_MS:-5000}"
        printf 'sentinel failover-timeout %s %s\n' "$name" "${SENTINEL_FAILOVER_TIMEOUT_MS:-60000}"
        printf 'sentinel parallel-syncs %s 1\n' "$name"
    } > "$conf"
fi

# The password lines, fresh from the environment; everything Sentinel learned stays. Its own
# rewrites put the password back as a hashed `user default` line (which would win over a new
# requirepass) and an unquoted auth-pass that it cannot read back: both go.
grep -v -e '^requirepass ' -e '^user default ' -e 'auth-pass ' "$conf" > "$conf.new" || true
{
    printf 'sentinel auth-pass %s "%s"\n' "$name" "$(quote "${REDIS_MASTER_PASSWORD:?}")"
    [ -z "${REDISCLI_AUTH:-}" ] || printf 'requirepass "%s"\n' "$(quote "$REDISCLI_AUTH")"
} >> "$conf.new"
mv "$conf.new" "$conf"
chown -R redis:redis "$dir" 2>/dev/null || true
exec ${REDIS_SERVER:-docker-entrypoint.sh redis-server} "$conf" --sentinel
