"""cigl-bayes: calibrated sparse networks (CigL) and their reading as hierarchical variational inference."""

__version__ = "0.1.0"

# The repository keeps models/, inference/, experiments/ and benchmarks/ beside this folder; pyproject's
# package-dir installs them as cigl_bayes.models, cigl_bayes.inference, ... so no top-level name of ours
# can clash with a user's models.py.  Run from a source checkout (PYTHONPATH, a worktree, the mutation
# check's copy), exactly those four names resolve to the folders of *this* checkout, never to an
# installed copy's: the code of one checkout stays together.
import importlib.abc as _abc  # noqa: E402
import importlib.util as _util  # noqa: E402
import os as _os  # noqa: E402
import sys as _sys  # noqa: E402

_SUBPACKAGES = ("models", "inference", "experiments", "benchmarks")


class _CheckoutSubpackages(_abc.MetaPathFinder):
    """Finds ``cigl_bayes.<name>`` for the four repository folders of one source checkout."""

    def __init__(self, checkout: str):
        self.checkout = checkout

    def find_spec(self, fullname, path=None, target=None):
        parent, _, name = fullname.partition(".")
        if parent != __name__ or name not in _SUBPACKAGES:
            return None
        folder = _os.path.join(self.checkout, name)
        return _util.spec_from_file_location(fullname, _os.path.join(folder, "__init__.py"),
                                             submodule_search_locations=[folder])


_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if all(_os.path.isfile(_os.path.join(_checkout, name, "__init__.py")) for name in _SUBPACKAGES) and \
        _os.path.isfile(_os.path.join(_checkout, "pyproject.toml")):
    _sys.meta_path[:] = [f for f in _sys.meta_path if not isinstance(f, _CheckoutSubpackages)]
    _sys.meta_path.insert(0, _CheckoutSubpackages(_checkout))

from .cigl import CigL  # noqa: E402  (the algorithm on your own module and optimizer; docs/api.md)

__all__ = ["CigL", "load_exported"]


def load_exported(path, **kwargs):
    """A network exported by ``python -m experiments.export`` (see :func:`cigl_bayes.export.load_exported`)."""
    from .export import load_exported as _load

    return _load(path, **kwargs)
