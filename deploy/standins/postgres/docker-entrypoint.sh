#!/bin/sh
# Entrypoint of the postgres stand-in, doing what the official image's does for the
# variables docker-compose.cluster.yml sets: on first start (an empty PGDATA) initdb with
# POSTGRES_USER (default postgres) as superuser with POSTGRES_PASSWORD (required), UTF-8,
# trust on the container's own socket, scram-sha-256 from the network; CREATE DATABASE
# POSTGRES_DB (default: the user's name). Then `postgres` in the foreground, as postgres.
set -eu

if [ "${1:-}" = postgres ]; then
    if [ "$(id -u)" = 0 ]; then
        # A fresh named volume may be owned by root.
        mkdir -p "$PGDATA" /var/run/postgresql
        chown postgres:postgres "$PGDATA" /var/run/postgresql
        chmod 0700 "$PGDATA"
        exec setpriv --reuid=postgres --regid=postgres --init-groups \
            env HOME=/var/lib/postgresql /usr/local/bin/docker-entrypoint.sh "$@"
    fi
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        if [ -z "${POSTGRES_PASSWORD:-}" ]; then
            echo "postgres: POSTGRES_PASSWORD must be set for a new database" >&2
            exit 1
        fi
        user=${POSTGRES_USER:-postgres}
        db=${POSTGRES_DB:-$user}
        pwfile=$(mktemp)
        printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
        initdb --username="$user" --pwfile="$pwfile" --encoding=UTF8 --locale=C.UTF-8 \
            --auth-local=trust --auth-host=scram-sha-256 --pgdata="$PGDATA" >/dev/null
        rm -f "$pwfile"
        printf "\nlisten_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
        printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
        if [ "$db" != postgres ]; then
            # Only the socket while initialising: the health check (TCP) fails until done.
            pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait start >/dev/null
            psql -v ON_ERROR_STOP=1 -q --username="$user" --dbname=postgres \
                --set=db="$db" <<'SQL'
CREATE DATABASE :"db";
SQL
            pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop >/dev/null
        fi
        echo "postgres: initialised $PGDATA (user $user, database $db)"
    fi
fi
exec "$@"
