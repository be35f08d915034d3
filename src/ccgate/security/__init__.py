"""Secrets: minting and checking keys."""
