"""The ``heroes`` command line: one package, one module per kind of user.

``heroes`` is ``cli.main:main``; ``python -m cli`` runs the same. This file imports nothing,
so that importing ``cli.agency`` or ``cli.consortium`` (what a deployed node runs) never
brings in the research commands and their Hydra.
"""
