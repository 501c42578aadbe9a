"""Adapter types and what can be chosen per module.

``make_adapter(kind, base_linear, **hparams)`` builds any registered type;
``count_params(kind, d_in, d_out, **hparams)`` counts its parameters without building it.
Importing this package registers every type below.  ``attach_supernet`` / ``activate`` /
``extract`` / ``PlanSampler`` put the whole space into a model as weight-sharing super-adapters.
"""
from .base import Adapter, base_shape
from .registry import ADAPTERS, adapter_class, count_params, make_adapter, register
from . import circulant, ia3, kronecker, ldr, lora, more, toeplitz  # noqa: F401  (registers types)
from .space import SPACES, Candidate, SearchSpace, load_space  # after the types it names
from .elastic import ElasticLinear
from .supernet import (PlanSampler, Selection, activate, attach_supernet, elastic_modules, extract,
                       plan_state_dict, train_supernet_steps)

__all__ = [
    "ADAPTERS", "Adapter", "adapter_class", "base_shape", "count_params", "make_adapter",
    "register", "SPACES", "Candidate", "SearchSpace", "load_space",
    "ElasticLinear", "PlanSampler", "Selection", "activate", "attach_supernet", "elastic_modules",
    "extract", "plan_state_dict", "train_supernet_steps",
]
