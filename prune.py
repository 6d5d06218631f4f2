"""Retraining-free pruning: ``python prune.py -c <config.yaml>``; with no arguments, the offline demo.

The same as the installed ``kp-lightning prune`` (and ``kp-lightning demo``). The demo builds a small
encoder, trains it on a task generated in code, prunes it with K-prune and writes the export to
``outputs/demo/pruned`` (configs/demo.yaml).
"""

import sys

from kp_lightning.commands import demo, prune

if __name__ == "__main__":
    if sys.argv[1:]:
        prune(sys.argv[1:], prog="prune.py")
    else:
        demo([], prog="prune.py")
