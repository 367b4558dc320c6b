"""The Bayesian reading of CigL (paper §4.2, App. B): Pyro model, hierarchical guide, −ELBO/N."""

from .guide import HierarchicalGuide
from .likelihoods import LIKELIHOODS
from .loading import load_run
from .model import SparseBayesianModel
from .objective import ElboObjective
from .posterior import ObjectPosterior, posterior
from .prediction import Prediction
from .priors import prior_scale_from_weight_decay
from .run import RunFolderError, TrainedRun
from .training import ENGINES, Trainer, run

__all__ = ["ENGINES", "ElboObjective", "HierarchicalGuide", "LIKELIHOODS", "ObjectPosterior", "Prediction",
           "RunFolderError", "SparseBayesianModel", "TrainedRun", "Trainer", "load_run", "posterior",
           "prior_scale_from_weight_decay", "run"]
