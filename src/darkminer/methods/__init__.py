"""Erasure methods: an explicit registry of (config, implementation) pairs behind one Protocol."""

from .all_but_one import AllButOne, AllButOneConfig
from .base import ErasureMethod, ErasureRequest, ErasureResult, get_method, list_methods, register_method
from .dark_miner import DarkMiner, DarkMinerConfig

register_method("dark_miner", DarkMinerConfig, DarkMiner, "Dark Miner (DM2): mine, verify, circumvent loops.")
register_method(
    "all_but_one", AllButOneConfig, AllButOne, "All but One: move the target's guidance to an alternative."
)

__all__ = ["ErasureMethod", "ErasureRequest", "ErasureResult", "get_method", "list_methods", "register_method"]
