"""pyconv.nn: layers (Modules), their functional forms (pyconv.nn.functional), initialisers,
weight penalties, the model summary and saliency maps."""
from . import functional, init
from .modules import *  # noqa: F401,F403
from .modules import __all__ as _modules_all
from .regularization import elastic_net_penalty, l1_penalty, l2_penalty
from .summary import saliency, summary

__all__ = list(_modules_all) + [
    "functional", "init", "summary", "saliency", "l1_penalty", "l2_penalty", "elastic_net_penalty",
]
