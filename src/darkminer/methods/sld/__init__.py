from .config import SLDConfig
from .method import SafeLatentDiffusion

__all__ = ["SLDConfig", "SafeLatentDiffusion"]
