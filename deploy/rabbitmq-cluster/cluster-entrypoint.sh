#!/bin/sh
# Entrypoint of the RabbitMQ nodes in docker-compose.cluster.yml: writes the cluster's
# shared Erlang cookie (ERLANG_COOKIE) where both the server and the CLI tools look for it,
# /var/lib/rabbitmq/.erlang.cookie (the official image links root's cookie there, the
# stand-in runs the tools as the rabbitmq user), then hands over to the image's own
# docker-entrypoint.sh. A file rather than the RABBITMQ_ERLANG_COOKIE variable, which
# RabbitMQ deprecated and 4.x no longer reads.
set -eu

if [ -z "${ERLANG_COOKIE:-}" ]; then
    echo "cluster-entrypoint: ERLANG_COOKIE is empty (RABBITMQ_ERLANG_COOKIE in .env)" >&2
    exit 1
fi
cookie=/var/lib/rabbitmq/.erlang.cookie
umask 077
rm -f "$cookie"
printf '%s' "$ERLANG_COOKIE" >"$cookie"
if [ "$(id -u)" = 0 ]; then
    chown rabbitmq:rabbitmq "$cookie"
fi
chmod 0400 "$cookie"
unset ERLANG_COOKIE
exec docker-entrypoint.sh "$@"
