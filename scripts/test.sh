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

.venv/bin/python -m ruff check src tests bench
.venv/bin/python -m mypy
exec .venv/bin/python -m pytest "$@"
