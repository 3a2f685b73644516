"""The ``llamashare`` command line: parse arguments, call one library function, print the result.

One module per command group (``publish``, ``fetching``, ``channels``, ``node``, ``models``, ``files``,
``generate``, ``serving``), each registering its commands on the root group in ``base``. Known errors become
one line on stderr and an exit code (2 = bad input, 1 = failure) through the single table in
``base.Commands``; a traceback means a bug.
"""

from llamashare.cli import channels, fetching, files, generate, models, node, publish, serving  # noqa: F401  (they register commands)
from llamashare.cli.base import cli, main

__all__ = ["cli", "main"]
