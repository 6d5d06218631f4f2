"""Fine-tune, distill and evaluate encoders: ``python train.py fit|validate|test -c <config.yaml>``."""

from kp_lightning.cli import main

if __name__ == "__main__":
    main()
