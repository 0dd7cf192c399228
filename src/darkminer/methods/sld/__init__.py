from .config import SLDConfig
from .method import SLD

__all__ = ["SLD", "SLDConfig"]
