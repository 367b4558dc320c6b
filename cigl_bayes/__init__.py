"""cigl-bayes: calibrated sparse networks (CigL) and their reading as hierarchical variational inference."""

__version__ = "0.1.0"
