# One image for the three chat services: gateway, logger and archiver.
# Each compose service picks its binary with `command:`; there is no ENTRYPOINT, e.g.
#   docker run --rm chat:local archiver --help
#
# Build:  docker build -t chat:local .      (or `docker compose build`)

# ---------------------------------------------------------------------------------------
# Builder
# ---------------------------------------------------------------------------------------
FROM rust:1-bookworm AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
WORKDIR /src

# 1. Dependencies only, cached as long as no manifest and Cargo.lock change: the workspace
#    and every member's Cargo.toml, with dummy sources in place of the real ones (and a
#    dummy for each `[[bench]]` a manifest declares: cargo refuses a manifest whose declared
#    targets are missing, even when it does not build them).
COPY Cargo.toml Cargo.lock ./
COPY chat-core/Cargo.toml chat-core/
COPY gateway/Cargo.toml gateway/
COPY logger/Cargo.toml logger/
COPY archiver/Cargo.toml archiver/
COPY bench/Cargo.toml bench/
RUN set -eux; \
    for manifest in */Cargo.toml; do \
        crate="${manifest%/Cargo.toml}"; \
        mkdir -p "$crate/src"; \
        : > "$crate/src/lib.rs"; \
        echo 'fn main() {}' > "$crate/src/main.rs"; \
        for bench in $(awk '/^\[\[bench\]\]/ { b = 1; next } /^\[/ { b = 0 } \
                            b && /^name *=/ { gsub(/^name *= *"|".*$/, ""); print }' "$manifest"); do \
            mkdir -p "$crate/benches"; \
            echo 'fn main() {}' > "$crate/benches/$bench.rs"; \
        done; \
    done; \
    cargo build --release --locked -p gateway -p logger -p archiver; \
    rm -rf -- */src */benches

# 2. The real sources, plus what they embed at compile time: `migrations/` (sqlx::migrate!
#    in the archiver) and `static/` (include_str! in the gateway).
COPY chat-core/ chat-core/
COPY gateway/ gateway/
COPY logger/ logger/
COPY archiver/ archiver/
# The benchmark tool is a workspace member: cargo needs it to load the workspace, though
# the image does not build it.
COPY bench/ bench/
COPY migrations/ migrations/
COPY static/ static/
# COPY keeps the files' own mtimes, which may be older than the dummy build's outputs:
# touch them so cargo rebuilds the workspace crates (dependencies stay cached). Then make
# sure no dummy binary slipped through (a dummy prints nothing for --version).
RUN set -eux; \
    find ./*/src -name '*.rs' -exec touch {} +; \
    cargo build --release --locked -p gateway -p logger -p archiver; \
    for bin in gateway logger archiver; do \
        "target/release/$bin" --version | grep -q "^$bin "; \
    done

# ---------------------------------------------------------------------------------------
# Runtime
# ---------------------------------------------------------------------------------------
FROM debian:bookworm-slim AS runtime

# ca-certificates for amqps:// brokers, curl for the compose healthchecks. Not pinned:
# rebuilding the image is how it picks up Debian's security updates.
# hadolint ignore=DL3008
RUN set -eux; \
    apt-get update; \
    apt-get install -y --no-install-recommends ca-certificates curl; \
    rm -rf /var/lib/apt/lists/*

# Non-root user. The data directories exist in the image, owned by `chat`, so that named
# volumes mounted on them (log/ for the logger, db/ for the archiver) start out writable.
RUN set -eux; \
    groupadd --gid 10001 chat; \
    useradd --uid 10001 --gid chat --no-create-home --home-dir /var/lib/chat \
        --shell /usr/sbin/nologin chat; \
    install -d -o chat -g chat -m 0755 /var/lib/chat; \
    install -d -o chat -g chat -m 0750 /var/lib/chat/log /var/lib/chat/db

COPY --from=builder /src/target/release/gateway /usr/local/bin/gateway
COPY --from=builder /src/target/release/logger /usr/local/bin/logger
COPY --from=builder /src/target/release/archiver /usr/local/bin/archiver

# The `chat` user, numerically, so that runtimes enforcing non-root can check it.
USER 10001:10001
WORKDIR /var/lib/chat

# gateway (GATEWAY_LISTEN) and archiver (ARCHIVER_LISTEN); both default to 127.0.0.1, so
# set 0.0.0.0:<port> to reach them from outside the container (compose does).
EXPOSE 3000 3100
