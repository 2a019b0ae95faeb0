# tandem: build in a Rust image, run in a slim Debian image as a non-root user.
#   docker build -t tandem .
#   docker run -p 8080:8080 -v "$PWD/my-tandem.toml:/etc/tandem/tandem.toml:ro" \
#       -v tandem-state:/var/lib/tandem tandem
# The mounted config must listen on 0.0.0.0 (config.example.toml listens on 127.0.0.1 only) and,
# for the HEALTHCHECK below, have an [admin] listener on its default 127.0.0.1:9090.
FROM rust:1-bookworm AS build
WORKDIR /src
# No debug info and no symbol table: the binary is about 10 MB instead of 75 MB.
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols
# The dependencies, compiled in a layer of their own against placeholder sources: it is built
# again only when Cargo.toml, Cargo.lock or benches/ (which the manifest names) change.
COPY Cargo.toml Cargo.lock ./
COPY benches ./benches
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked --bin tandem \
    && rm -rf src target/release/.fingerprint/tandem-*
COPY src ./src
RUN cargo build --release --locked --bin tandem

FROM debian:bookworm-slim
# ca-certificates: the trust store of [pool.tls] without `ca` (tandem refuses to start on an
# empty one).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --no-create-home --shell /usr/sbin/nologin tandem \
    && mkdir -p /etc/tandem /var/lib/tandem \
    && chown tandem:tandem /var/lib/tandem
COPY --from=build /src/target/release/tandem /usr/local/bin/tandem
COPY config.example.toml /etc/tandem/tandem.toml
USER tandem
# [session] snapshot = "/var/lib/tandem/sessions": proxy mode's sessions across restarts.
VOLUME /var/lib/tandem
# The public listener, as the mounted config sets it in [listen].
EXPOSE 8080
STOPSIGNAL SIGTERM
# The image has no curl: tandem probes its own admin listener (exit 0 on 200).
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["/usr/local/bin/tandem", "healthcheck", "--timeout", "3s", "http://127.0.0.1:9090/healthz"]
ENTRYPOINT ["/usr/local/bin/tandem"]
CMD ["-c", "/etc/tandem/tandem.toml"]
