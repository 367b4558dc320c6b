"""cigl-bayes: calibrated sparse networks (CigL) and their reading as hierarchical variational inference."""

__version__ = "0.1.0"

# The repository keeps models/, inference/, experiments/ and benchmarks/ beside this folder; pyproject's
# package-dir installs them as cigl_bayes.models, cigl_bayes.inference, ... so no top-level name of ours
# can clash with a user's models.py.  Run from a source checkout (PYTHONPATH, a worktree, the mutation
# check's copy), the sibling folders of *this* checkout are the subpackages: searching the checkout after
# this folder keeps the code of one checkout together instead of mixing it with an installed copy.
import os as _os  # noqa: E402

_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")) and \
        _os.path.isfile(_os.path.join(_checkout, "models", "registry.py")):
    __path__.append(_checkout)  # noqa: F821  (the package's own search path)

from .cigl import CigL  # noqa: E402  (the algorithm on your own module and optimizer; docs/api.md)

__all__ = ["CigL", "load_exported"]


def load_exported(path, **kwargs):
    """A network exported by ``python -m experiments.export`` (see :func:`cigl_bayes.export.load_exported`)."""
    from .export import load_exported as _load

    return _load(path, **kwargs)
