"""End-to-end benchmark of the embedded pipeline; the code is in bench/pipeline_bench/.

Run: ``.venv/bin/python bench/pipeline.py [--duration 60] [--devices 50] [--latency-rate 5000]``
(``--help`` lists every option; bench/README.md says what each figure measures).
"""

from __future__ import annotations

import sys

from pipeline_bench.main import main

if __name__ == "__main__":
    sys.exit(main())
