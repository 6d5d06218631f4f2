"""Paths and fixed settings of the all-MiniLM-L6-v2 benchmark."""

from __future__ import annotations

import os
from pathlib import Path

from harness import RESULTS

RUNS = RESULTS / "embedding_minilm_runs.json"
CACHE = Path(os.path.expanduser("~/.cache/kp_lightning/embedding_minilm"))
M2V_PYTHON = CACHE / "m2v-venv" / "bin" / "python"
THREADS = 2
LATENCY_SHAPES = ((32, 128), (1, 32))
NUM_TOKENS = 16384
KWON_SAMPLES, KWON_AVG_LENGTH = 2048, 16
SEED = 0
PCA_DIMS = 256
DENSE_STSB = 0.867  # the brief's reference value of the dense model
