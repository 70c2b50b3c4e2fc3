# syntax=docker/dockerfile:1
# Multi-stage: build with dev dependencies, ship compiled JS with production dependencies only.
FROM node:22-bookworm-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:22-bookworm-slim
# tini is PID 1: it forwards SIGTERM to node (which then stops fetching, flushes, checkpoints and releases
# its leases within shutdown.deadlineMs) and reaps zombies.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY --from=build --chown=root:root /app/node_modules ./node_modules
COPY --from=build --chown=root:root /app/dist ./dist
COPY --chown=root:root package.json ./
COPY --chown=root:root examples/worker.yaml /etc/ksw/worker.yaml
# The app is owned by root and run as `node` (uid 1000): the process cannot modify its own code, and the
# root filesystem can be mounted read-only. Parquet files are staged in /tmp: mount a writable volume
# there (emptyDir on Kubernetes, a tmpfs or volume on ECS).
USER 1000:1000
ENV NODE_ENV=production \
    NODE_OPTIONS=--enable-source-maps
EXPOSE 9400
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:9400/healthz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--", "node", "dist/cli/main.js"]
CMD ["run", "-c", "/etc/ksw/worker.yaml"]
