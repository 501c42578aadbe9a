"""Adapter types and what can be chosen per module.

``make_adapter(kind, base_linear, **hparams)`` builds any registered type;
``count_params(kind, d_in, d_out, **hparams)`` counts its parameters without building it.
Importing this package registers every type below.
"""
from .base import Adapter, base_shape
from .registry import ADAPTERS, adapter_class, count_params, make_adapter, register
from . import circulant, kronecker, ldr, lora, more, toeplitz  # noqa: F401  (registers types)
from .space import SPACES, Candidate, SearchSpace, load_space  # after the types it names

__all__ = [
    "ADAPTERS", "Adapter", "adapter_class", "base_shape", "count_params", "make_adapter",
    "register", "SPACES", "Candidate", "SearchSpace", "load_space",
]
