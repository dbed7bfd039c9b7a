#!/bin/sh
# Entrypoint of the rabbitmq stand-in: writes the configuration from the environment, as the
# official image does, then runs the server in the foreground as the rabbitmq user.
set -eu

if [ "${1:-}" = rabbitmq-server ]; then
    conf=/etc/rabbitmq/rabbitmq.conf
    {
        echo "listeners.tcp.default = 5672"
        echo "management.tcp.port = 15672"
        echo "loopback_users.guest = false"
        # Applied only when the node's database is created, as with the official image.
        if [ -n "${RABBITMQ_DEFAULT_USER:-}" ]; then
            echo "default_user = $RABBITMQ_DEFAULT_USER"
        fi
        if [ -n "${RABBITMQ_DEFAULT_PASS:-}" ]; then
            echo "default_pass = $RABBITMQ_DEFAULT_PASS"
        fi
    } >"$conf"
    chown rabbitmq:rabbitmq "$conf"
    chmod 0640 "$conf"
    # A fresh named volume is owned by root unless it inherited the image's directory.
    chown rabbitmq:rabbitmq /var/lib/rabbitmq
    if [ "$(id -u)" = 0 ]; then
        exec setpriv --reuid=rabbitmq --regid=rabbitmq --init-groups \
            env HOME=/var/lib/rabbitmq /usr/lib/rabbitmq/bin/rabbitmq-server
    fi
    exec /usr/lib/rabbitmq/bin/rabbitmq-server
fi
exec "$@"
