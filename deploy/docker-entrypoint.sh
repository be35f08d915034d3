#!/bin/sh
# Container entrypoint: copy the operator's claude CLI login, mounted read-only at
# $CLAUDE_LOGIN_MOUNT (/claude-login), into the writable $CLAUDE_CONFIG_DIR, then run the command.
# The CLI refreshes its tokens and keeps its bookkeeping in the copy; the original is only read.
set -eu

login_mount="${CLAUDE_LOGIN_MOUNT:-/claude-login}"
config_dir="${CLAUDE_CONFIG_DIR:-$HOME/.claude}"

umask 077
mkdir -p "$config_dir"
chmod 700 "$config_dir"

if [ -d "$login_mount" ]; then
    found=0
    for name in .credentials.json .claude.json; do
        original="$login_mount/$name"
        copy="$config_dir/$name"
        [ -e "$original" ] || continue
        found=1
        if [ ! -r "$original" ]; then
            echo "ccgate-entrypoint: $original is not readable by uid $(id -u); build the image" \
                "with --build-arg APP_UID=<the uid that owns it> (docs/deploy.md)" >&2
            exit 1
        fi
        # A copy newer than the original holds tokens the CLI refreshed: keep it. An original
        # newer than the copy is a fresh login on the host: take it.
        if [ ! -e "$copy" ] || [ "$original" -nt "$copy" ]; then
            cp "$original" "$copy.tmp"
            chmod 600 "$copy.tmp"
            mv -f "$copy.tmp" "$copy"
            echo "ccgate-entrypoint: copied $name from $login_mount to $config_dir" >&2
        fi
    done
    if [ "$found" = 0 ]; then
        echo "ccgate-entrypoint: no CLI login (.credentials.json) in $login_mount" >&2
    fi
fi

exec "$@"
