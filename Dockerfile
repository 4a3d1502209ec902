# syntax=docker/dockerfile:1
# Build: docker build -t moat .
# Run:   docker run -v /etc/moat:/etc/moat:ro -p 11112:11112 moat
#        (/etc/moat holds moat.toml, network-set files and certificates)

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p moat \
 && install -D -m 0755 target/release/moat /out/moat

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/moat /usr/local/bin/moat
# Config, allowlists and certificates are mounted, never baked in.
VOLUME ["/etc/moat"]
USER nonroot:nonroot
# The admin listener (health, metrics) stays on loopback inside the
# container; the health check runs in the same network namespace.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/moat", "health", "--admin", "127.0.0.1:9090"]
ENTRYPOINT ["/usr/local/bin/moat"]
CMD ["run", "-c", "/etc/moat/moat.toml"]
