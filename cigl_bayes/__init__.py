"""cigl-bayes: calibrated sparse networks (CigL) and their reading as hierarchical variational inference."""

__version__ = "0.1.0"


def load_exported(path, **kwargs):
    """A network exported by ``python -m experiments.export`` (see :func:`cigl_bayes.export.load_exported`)."""
    from .export import load_exported as _load

    return _load(path, **kwargs)
