"""`python -m fastinv` is the `fastinv` command."""

from fastinv.cli import main

main()
