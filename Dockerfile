# syntax=docker/dockerfile:1
# ccgate in a container: the gateway with its PostgreSQL and Redis extras, and the pinned
# claude CLI. Build: `docker build -t ccgate .`; run and mount points: docs/deploy.md.

ARG PYTHON_IMAGE=python:3.12-slim-bookworm
ARG NODE_IMAGE=node:22-bookworm-slim

# The pinned claude CLI (the version scripts/test.sh tests with). Its npm postinstall puts the
# native binary for this platform at bin/claude.exe; that binary needs only glibc, so Node
# stays in this stage.
FROM ${NODE_IMAGE} AS claude-cli
ARG CLAUDE_CODE_VERSION=2.1.330
RUN npm install --global --prefix /opt/claude --no-fund --no-audit --loglevel=error \
        "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}" \
    && test "$(/opt/claude/bin/claude --version)" = "${CLAUDE_CODE_VERSION} (Claude Code)"

# ccgate and its dependencies in a virtual environment, copied whole into the final image.
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY src ./src
RUN python -m venv /opt/ccgate \
    && /opt/ccgate/bin/pip install --no-cache-dir ".[postgres,redis]"

FROM ${PYTHON_IMAGE}
# The user the gateway runs as. Give it the uid of the host account whose CLI login is mounted
# (that file is readable by its owner only): --build-arg APP_UID=$(id -u).
ARG APP_UID=10001
ARG APP_GID=10001
RUN groupadd --gid "${APP_GID}" ccgate \
    && useradd --uid "${APP_UID}" --gid ccgate --home-dir /home/ccgate --create-home \
        --shell /usr/sbin/nologin ccgate \
    && install -d -o ccgate -g ccgate -m 0700 /data

COPY --from=build /opt/ccgate /opt/ccgate
COPY --from=claude-cli /opt/claude/lib/node_modules/@anthropic-ai/claude-code/bin/claude.exe \
    /usr/local/bin/claude
COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/ccgate-entrypoint

# CCGATE_HOST=0.0.0.0: the container's own network is the boundary, so the server listens on
# every interface of it. Publish the port on the host's loopback or behind a proxy, and set
# CCGATE_ALLOW_CIDRS and CCGATE_TRUSTED_PROXIES for the networks that reach it; the admin API
# stays off unless CCGATE_ADMIN_TOKEN is given (docs/deploy.md).
ENV PATH=/opt/ccgate/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/home/ccgate \
    CLAUDE_CONFIG_DIR=/home/ccgate/.claude \
    CCGATE_CLAUDE_PATH=/usr/local/bin/claude \
    CCGATE_HOST=0.0.0.0 \
    CCGATE_PORT=8787 \
    CCGATE_DATABASE_URL=sqlite:////data/ccgate.db

VOLUME ["/data"]
EXPOSE 8787
USER ${APP_UID}:${APP_GID}
WORKDIR /home/ccgate

# /readyz answers 200 when the store answers and the CLI is found, 503 otherwise; urlopen
# raises on a 503, so the check fails with it.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/readyz' % os.environ.get('CCGATE_PORT', '8787'), timeout=4)"]

ENTRYPOINT ["ccgate-entrypoint"]
CMD ["ccgate", "serve"]
