"""Worlds: what the library knows about concepts on a family of models, resolved once per job ([`world_for`]).

Methods, attacks and the evaluation receive prompts and a detector from a world and never ask what the model is;
the one place that looks at a model to pick its world is [`world_for`].
"""

from __future__ import annotations

from ..models import DiffusionModel
from .base import World
from .shapesworld import ShapesWorld, ShapesWorldSuite, is_shapesworld
from .suite import Suite


def world_for(model: DiffusionModel) -> World:
    """ShapesWorld's world for a ShapesWorld model (which ships a classifier), else the generic one."""
    return ShapesWorld() if is_shapesworld(model) else World()


__all__ = ["ShapesWorld", "ShapesWorldSuite", "Suite", "World", "is_shapesworld", "world_for"]
