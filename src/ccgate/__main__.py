"""``python -m ccgate`` runs the ccgate command."""

from ccgate.cli import main

main()
