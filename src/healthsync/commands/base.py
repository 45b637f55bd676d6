"""What every command shares: the subparsers type and the settings they start from."""

from __future__ import annotations

import argparse
from typing import TypeAlias

from healthsync.config import Settings

# What `ArgumentParser.add_subparsers()` returns, and each module's register() extends.
# A string: argparse's class takes no type arguments at run time.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def settings_from(args: argparse.Namespace) -> Settings:
    """Settings from the environment and `--config`, with the global `--log-level` applied."""
    settings = Settings.load(args.config)
    if args.log_level:
        settings.log_level = args.log_level
    return settings
