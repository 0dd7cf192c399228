from .config import UCEConfig
from .method import UCE

__all__ = ["UCE", "UCEConfig"]
