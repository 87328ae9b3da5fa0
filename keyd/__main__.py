"""`python -m keyd --help`."""

from keyd.cli import main

main()
