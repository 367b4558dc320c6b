"""cigl-bayes: calibrated sparse networks (CigL) and their reading as hierarchical variational inference."""

__version__ = "0.1.0"

from .cigl import CigL  # noqa: E402  (the algorithm on your own module and optimizer; docs/api.md)

__all__ = ["CigL", "load_exported"]


def load_exported(path, **kwargs):
    """A network exported by ``python -m experiments.export`` (see :func:`cigl_bayes.export.load_exported`)."""
    from .export import load_exported as _load

    return _load(path, **kwargs)
