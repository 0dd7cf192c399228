from .config import CircumventConfig, DarkMinerConfig, LoraSettings, MiningConfig, PoolConfig, VerifyConfig
from .method import DarkMiner

__all__ = [
    "CircumventConfig",
    "DarkMiner",
    "DarkMinerConfig",
    "LoraSettings",
    "MiningConfig",
    "PoolConfig",
    "VerifyConfig",
]
