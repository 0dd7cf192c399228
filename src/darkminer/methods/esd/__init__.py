from .config import EsdConfig
from .method import Esd, esd_loss, esd_target_modules, partial_trajectory

__all__ = ["Esd", "EsdConfig", "esd_loss", "esd_target_modules", "partial_trajectory"]
