"""Fault injection on a running pipeline: what each fault costs, measured.

The code is in bench/faults_bench/; bench/README.md says what each figure means.
Needs root for the partition (a network namespace and iptables). Run:
``.venv/bin/python bench/faults.py [--rate 2000] [--devices 40] [--only NAME,...]``.
"""

from __future__ import annotations

import sys

from faults_bench.main import main

if __name__ == "__main__":
    sys.exit(main())
