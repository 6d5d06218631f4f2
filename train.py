"""Fine-tune, distill and evaluate encoders: ``python train.py fit|validate|test -c <config.yaml>``.

The same as the installed ``kp-lightning train``.
"""

import sys

from kp_lightning.commands import train

if __name__ == "__main__":
    train(sys.argv[1:], prog="train.py")
