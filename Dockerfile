# The switchboard binary in a small runtime image. librdkafka is built from source (cmake) and
# linked statically; the runtime needs only the C libraries it was built against.
FROM rust:1.95-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends cmake libcurl4-openssl-dev libsasl2-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p switchboard-api

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libcurl4 libsasl2-2 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /data switchboard \
    && mkdir -p /data /media && chown switchboard /data /media
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
USER switchboard
ENV SWITCHBOARD_DATA_DIR=/data
VOLUME /data
EXPOSE 8080
ENTRYPOINT ["switchboard"]
CMD ["serve"]
