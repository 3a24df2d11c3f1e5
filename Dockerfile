# Build: docker build -t jitsi-router .
# Run:   docker run -p 443:8443 -p 80:8080 -v /etc/jitsi-router:/etc/jitsi-router:ro jitsi-router
# The image runs as an unprivileged user, so listen on ports above 1024 inside the container
# (for example listen = "0.0.0.0:8443", http_listen = "0.0.0.0:8080", public_https_port = 443)
# and publish them as 443/80. Mount the config and certificates read-only.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
# jemalloc's settings (see src/main.rs) are read when it is built.
COPY .cargo ./.cargo
COPY src ./src
COPY benches ./benches
RUN cargo build --release --locked --bin jitsi-router

FROM debian:bookworm-slim
# ca-certificates follows Debian's security updates: a pinned version would stop building.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 jitsi-router \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --shell /usr/sbin/nologin jitsi-router
COPY --from=build /src/target/release/jitsi-router /usr/local/bin/jitsi-router
# Numeric, so that the host and Kubernetes' runAsNonRoot can tell it is not root.
USER 10001:10001
VOLUME ["/etc/jitsi-router"]
EXPOSE 8443 8080
ENTRYPOINT ["jitsi-router"]
CMD ["serve", "--config", "/etc/jitsi-router/router.toml"]
