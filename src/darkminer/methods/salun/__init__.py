from .config import SalUnConfig
from .method import MaskedDelta, SalUn, salun_target_modules

__all__ = ["MaskedDelta", "SalUn", "SalUnConfig", "salun_target_modules"]
