from .config import FMNConfig
from .method import FMN, ConceptAttention, ConceptAttentionProcessor, concept_mask, recording_concept_attention

__all__ = [
    "FMN",
    "ConceptAttention",
    "ConceptAttentionProcessor",
    "FMNConfig",
    "concept_mask",
    "recording_concept_attention",
]
