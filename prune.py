"""Retraining-free pruning: ``python prune.py -c <config.yaml>``; with no arguments, an offline demo.

The demo builds a small encoder, trains it on a task generated in code, prunes it with K-prune and writes
the export to ``outputs/demo/pruned`` (configs/demo.yaml).
"""

import sys
from pathlib import Path

from kp_lightning.prune_cli import main

DEMO_CONFIG = Path(__file__).resolve().parent / "configs" / "demo.yaml"

if __name__ == "__main__":
    args = sys.argv[1:]
    if not args:
        from kp_lightning.demo import prepare_demo

        prepare_demo("outputs/demo")
        args = ["--config", str(DEMO_CONFIG)]
    main(args)
