"""Erasure methods: an explicit registry of (config, implementation) pairs behind one Protocol."""

from .all_but_one import AllButOne, AllButOneConfig
from .base import ErasureMethod, ErasureRequest, ErasureResult, get_method, list_methods, register_method
from .ca import CaConfig, ConceptAblation
from .dark_miner import DarkMiner, DarkMinerConfig
from .esd import Esd, EsdConfig
from .fmn import FMN, FMNConfig
from .salun import SalUn, SalUnConfig
from .sld import SLD, SLDConfig
from .uce import UCE, UCEConfig

register_method("dark_miner", DarkMinerConfig, DarkMiner, "Dark Miner (DM2): mine, verify, circumvent loops.")
register_method(
    "all_but_one", AllButOneConfig, AllButOne, "All but One: move the target's guidance to an alternative."
)
register_method("esd", EsdConfig, Esd, "ESD: subtract the concept's guidance, on x_t the model itself draws.")
register_method("ca", CaConfig, ConceptAblation, "Concept Ablation (model-based): target prompts -> anchor prompts.")
register_method("uce", UCEConfig, UCE, "UCE: closed-form edit of cross-attention keys/values, no training.")
register_method("fmn", FMNConfig, FMN, "Forget-Me-Not: re-steer cross-attention away from the concept.")
register_method("sld", SLDConfig, SLD, "SLD: safety guidance at sampling time, no weights.")
register_method("salun", SalUnConfig, SalUn, "SalUn: gradient-saliency mask, then masked random-label fine-tuning.")

__all__ = ["ErasureMethod", "ErasureRequest", "ErasureResult", "get_method", "list_methods", "register_method"]
