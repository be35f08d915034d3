"""The doors: each module parses one wire format and renders its answers; the lifecycle
(``api/lifecycle.py``) admits, runs and settles. No door imports another door."""
