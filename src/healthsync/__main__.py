"""`python -m healthsync` is the `healthsync` command."""

from __future__ import annotations

import sys

from healthsync.cli import main

sys.exit(main())
