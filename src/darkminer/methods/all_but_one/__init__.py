from .config import AllButOneConfig
from .method import AllButOne, all_but_one_loss

__all__ = ["AllButOne", "AllButOneConfig", "all_but_one_loss"]
