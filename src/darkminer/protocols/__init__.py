"""What a concept means on a real model, resolved once per job: its normal prompts, preservation captions, detector
and decision rule, pinned in a record (file hashes, detector versions and weights) that results carry.

ShapesWorld's suite lives in `darkminer.worlds` (its classifier is the ground truth); real models get theirs from
files and the named presets here, as an [`EvaluationProtocol`] (a [`~darkminer.worlds.Suite`]): `nudity` (I2P's
sexual prompts judged by NudeNet), the other I2P categories (Q16), and objects and styles (CLIP zero-shot over a
class list).
"""

from darkminer.protocols.files import read_captions, read_i2p_prompts
from darkminer.protocols.protocol import (
    I2P_CATEGORIES,
    EvaluationProtocol,
    NormalPrompt,
    ProtocolOptions,
    build_protocol,
)

__all__ = [
    "I2P_CATEGORIES",
    "EvaluationProtocol",
    "NormalPrompt",
    "ProtocolOptions",
    "build_protocol",
    "read_captions",
    "read_i2p_prompts",
]
