# tandem: build in a Rust image, run in a slim Debian image as a non-root user.
#   docker build -t tandem .
#   docker run -p 8080:8080 -v "$PWD/my-tandem.toml:/etc/tandem/tandem.toml:ro" tandem
# The mounted config must listen on 0.0.0.0 (config.example.toml listens on 127.0.0.1 only).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY benches ./benches
COPY examples ./examples
RUN cargo build --release --locked --bin tandem

FROM debian:bookworm-slim
RUN useradd --system --no-create-home --shell /usr/sbin/nologin tandem \
    && mkdir -p /etc/tandem
COPY --from=build /src/target/release/tandem /usr/local/bin/tandem
COPY config.example.toml /etc/tandem/tandem.toml
USER tandem
# The public listener, as the mounted config sets it in [listen].
EXPOSE 8080
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/tandem"]
CMD ["-c", "/etc/tandem/tandem.toml"]
