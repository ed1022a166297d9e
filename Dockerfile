# flashsale's image. The default target builds from source in the official Rust image
# and copies the binary into a small Debian runtime; `--target prebuilt` takes a binary
# built outside (the `flashsale` file at the root of the build context) instead, for
# machines that reach Debian's mirrors but no container registry (scripts/image-test.sh).
#
#   docker build -t flashsale .
#   docker run -p 8080:8080 -p 9090:9090 flashsale                # embedded mode
#   docker run flashsale serve --config /etc/flashsale/cluster.toml --role api

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY loadtests/Cargo.toml loadtests/Cargo.toml
COPY loadtests/src loadtests/src
COPY migrations migrations
COPY src src
RUN cargo build --release --locked -p flashsale --bin flashsale \
    && strip target/release/flashsale \
    && cp target/release/flashsale /flashsale

# What both targets share: no shell wrapper (the binary is PID 1 and drains on
# SIGTERM itself), a user without privileges, a writable data directory for
# embedded mode, the example cluster config.
FROM docker.io/library/debian:bookworm-slim AS runtime-base
RUN mkdir -p /data /etc/flashsale && chown 10001:10001 /data
COPY config/cluster.toml /etc/flashsale/cluster.toml
ENV FLASHSALE__HTTP__LISTEN=0.0.0.0:8080 \
    FLASHSALE__ADMIN__LISTEN=0.0.0.0:9090 \
    FLASHSALE__EMBEDDED__DATA_DIR=/data
WORKDIR /data
USER 10001:10001
EXPOSE 8080 9090
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/flashsale"]
CMD ["serve"]

FROM runtime-base AS prebuilt
COPY --chmod=0755 flashsale /usr/local/bin/flashsale

FROM runtime-base AS runtime
COPY --from=build /flashsale /usr/local/bin/flashsale
