"""``python -m llamashare`` runs the same CLI as the ``llamashare`` script."""

from llamashare.cli import main

main()
