"""``python -m hwnas``: the ``hwnas`` command."""

from hwnas.cli.main import main

main()
