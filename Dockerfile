# One image with all three binaries: chat-server, chat-persister and loadgen (docker-compose.yml
# runs each service from it with its own command).
FROM rust:1-bookworm AS build
# cmake builds librdkafka (rdkafka's cmake-build feature); it links zlib.
RUN apt-get update && apt-get install -y --no-install-recommends cmake pkg-config zlib1g-dev && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# One cargo invocation: building the binaries one by one would unify features differently and
# rebuild the shared dependencies each time.
RUN cargo build --release --locked -p chat-server -p chat-persister -p loadgen

FROM debian:bookworm-slim
# curl: the compose health checks.
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/chat-server /src/target/release/chat-persister /src/target/release/loadgen /usr/local/bin/
EXPOSE 8080 9464
CMD ["chat-server", "--listen", "0.0.0.0:8080"]
