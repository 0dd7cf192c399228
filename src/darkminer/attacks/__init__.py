"""Attacks on erased models: an explicit registry of (config, implementation) pairs behind one Protocol.

```python
from darkminer.attacks import get_attack

entry = get_attack("cce")
result = entry.attack_class(entry.config_class(steps=500)).run(model, concept="star")
images = model.generate(cond=result.conditionings(model))
```
"""

from .base import Attack, AttackEntry, AttackResult, get_attack, list_attacks, register_attack
from .cce import CCE, CCEConfig
from .p4d import P4D, P4DConfig
from .ring_a_bell import RingABell, RingABellConfig
from .unlearn_diff import UnlearnDiff, UnlearnDiffConfig

register_attack("cce", CCEConfig, CCE, "Circumventing Concept Erasure: textual inversion against the erased model.")
register_attack("p4d", P4DConfig, P4D, "Prompting4Debugging: hard prompt matching the original's noise prediction.")
register_attack(
    "unlearn_diff",
    UnlearnDiffConfig,
    UnlearnDiff,
    "UnlearnDiff: hard tokens added to the prompt, minimising the denoising loss.",
)
register_attack(
    "ring_a_bell",
    RingABellConfig,
    RingABell,
    "Ring-A-Bell: genetic token search towards a concept shift in text space.",
)

__all__ = [
    "CCE",
    "P4D",
    "Attack",
    "AttackEntry",
    "AttackResult",
    "CCEConfig",
    "P4DConfig",
    "RingABell",
    "RingABellConfig",
    "UnlearnDiff",
    "UnlearnDiffConfig",
    "get_attack",
    "list_attacks",
    "register_attack",
]
