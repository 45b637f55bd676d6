"""The `healthsync` subcommands: one module per command or group of commands.

Each module has ``register(subparsers)``, which adds its parsers and sets
``func`` to the function that runs the command; ``healthsync.cli`` lists the
modules in the order ``healthsync --help`` shows them. Heavy imports stay
inside the command functions, so ``--help`` and quick commands start fast.
"""
