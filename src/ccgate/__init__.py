"""ccgate: a self-hosted gateway for the Claude Code CLI and the Anthropic API."""

__version__ = "0.1.0"
