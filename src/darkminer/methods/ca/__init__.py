from .config import CaConfig
from .method import ConceptAblation, ca_loss, prompt_pairs

__all__ = ["CaConfig", "ConceptAblation", "ca_loss", "prompt_pairs"]
