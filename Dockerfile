# syntax=docker/dockerfile:1
# Images of virtual-env (`make image`, `make demo-app-image`). The controller image embeds
# the filter module it was built with and serves it to the sidecars.

FROM rust:1.95-bookworm AS build-filter
WORKDIR /src
RUN rustup target add wasm32-wasip1
COPY . .
RUN cargo build --locked -p virtual-env-filter --target wasm32-wasip1 --release

# The module the controller embeds. A release replaces this stage with the module it
# attaches (`--build-context filter=target/wasm32-wasip1/release`), so that the image and
# the release asset are the same bytes.
FROM scratch AS filter
COPY --from=build-filter /src/target/wasm32-wasip1/release/virtual_env_filter.wasm /virtual_env_filter.wasm

FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
COPY --from=filter /virtual_env_filter.wasm /filter/virtual_env_filter.wasm
ENV VIRTUAL_ENV_WASM=/filter/virtual_env_filter.wasm
RUN cargo build --locked --release -p virtual-env-controller --bin virtual-env \
 && cargo build --locked --release -p virtual-env-e2e --bin virtual-env-mesh

# The controller: distroless, non-root, one static-ish binary.
FROM gcr.io/distroless/cc-debian12:nonroot AS controller
COPY --from=build /src/target/release/virtual-env /usr/local/bin/virtual-env
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["/usr/local/bin/virtual-env"]
CMD ["run"]

# The demo's test application (deploy/demo/demo.yaml).
FROM gcr.io/distroless/cc-debian12:nonroot AS demo-app
COPY --from=build /src/target/release/virtual-env-mesh /usr/local/bin/virtual-env-mesh
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/virtual-env-mesh"]
