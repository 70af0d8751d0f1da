# syntax=docker/dockerfile:1
#
# trustproxy's image: a static binary on distroless, running as nonroot (65532).
#
#	docker build --build-arg VERSION=$(git describe --tags --always) -t trustproxy .
#	docker run -p 5000:5000 -e TRUSTPROXY_LISTEN=0.0.0.0:5000 \
#	    -v $PWD/trustproxy.yaml:/etc/trustproxy/trustproxy.yaml:ro \
#	    -v trustproxy-data:/var/lib/trustproxy trustproxy
#
# In a container, listen must be 0.0.0.0:5000 (listen: in the file, or
# TRUSTPROXY_LISTEN=0.0.0.0:5000): the default, 127.0.0.1:5000, accepts
# nothing from outside the container. The image does not set it, because
# TRUSTPROXY_* variables override what the file says.
#
# Data (storage, trust metadata caches) belongs under /var/lib/trustproxy: set
# data_dir: /var/lib/trustproxy in the file (or TRUSTPROXY_DATA_DIR). The
# working directory is that volume too, so the default data_dir,
# ./trustproxy-data, also lands in it. The configuration file, TLS files
# (tls.cert_file, tls.key_file) and signer keys are mounted read-only;
# certs/README.md says how to make them.

ARG GO_VERSION=1.26

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION}-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/go/pkg/mod go mod download
COPY . .
ARG VERSION=dev
ARG TARGETOS TARGETARCH
RUN --mount=type=cache,target=/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
	CGO_ENABLED=0 GOOS=$TARGETOS GOARCH=$TARGETARCH \
	go build -trimpath -ldflags "-s -w -X main.version=${VERSION}" -o /trustproxy ./cmd/trustproxy
# The volume's mount point, owned by nonroot: distroless has no shell to make it.
RUN mkdir -p /out/var/lib/trustproxy /out/etc/trustproxy

# static-debian12 holds CA certificates, tzdata and /etc/passwd entries for nonroot.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /trustproxy /trustproxy
COPY --from=build --chown=65532:65532 /out/var/lib/trustproxy /var/lib/trustproxy
COPY --from=build /out/etc/trustproxy /etc/trustproxy
USER nonroot:nonroot
WORKDIR /var/lib/trustproxy
VOLUME /var/lib/trustproxy
EXPOSE 5000
ENTRYPOINT ["/trustproxy"]
CMD ["serve", "--config", "/etc/trustproxy/trustproxy.yaml"]
