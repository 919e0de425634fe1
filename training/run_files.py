"""The names of what a run writes into its ``--out`` folder (no PyTorch: the CLI's help and
the onnxruntime-only commands name them too)."""

from __future__ import annotations

CONFIG_FILE = "config.json"  # the resolved configuration
SPLIT_FILE = "split.json"  # train / validation (/ held-out) identities
METRICS_FILE = "metrics.json"  # figures, timings, the fit, the manifest's path
METRICS_CSV = "metrics.csv"  # one row per epoch
REPORT_FILE = "report.txt"  # the headline table
NO_FACE_FILE = "no_face.txt"  # photos without a face, or unreadable
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.pt"  # resumes a run
BEST_CHECKPOINT = "best.pt"  # the best epoch's weights
