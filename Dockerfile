# syntax=docker/dockerfile:1
# Images of virtual-env (`make image`, `make demo-app-image`). The controller image embeds
# the filter module it was built with and serves it to the sidecars.

FROM rust:1.95-bookworm AS build
WORKDIR /src
RUN rustup target add wasm32-wasip1
COPY . .
# The filter first: the controller's build script embeds it.
RUN cargo build --locked -p virtual-env-filter --target wasm32-wasip1 --release \
 && cargo build --locked --release -p virtual-env-controller --bin virtual-env \
 && cargo build --locked --release -p virtual-env-e2e --bin virtual-env-mesh

# The controller: distroless, non-root, one static-ish binary.
FROM gcr.io/distroless/cc-debian12:nonroot AS controller
COPY --from=build /src/target/release/virtual-env /usr/local/bin/virtual-env
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/virtual-env"]
CMD ["run"]

# The demo's test application (deploy/demo/demo.yaml).
FROM gcr.io/distroless/cc-debian12:nonroot AS demo-app
COPY --from=build /src/target/release/virtual-env-mesh /usr/local/bin/virtual-env-mesh
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/virtual-env-mesh"]
