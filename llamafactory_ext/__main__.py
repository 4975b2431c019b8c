"""`python -m llamafactory_ext`: the lfx command line."""

from .cli import main

main()
