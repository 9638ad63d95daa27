"""Recipes: typed YAML pipelines of stages, run into resumable run folders."""
from condense.recipes.measure import MeasureConfig, measure_model
from condense.recipes.runner import resume_run, run_recipe
from condense.recipes.schema import Recipe, StageSpec, load_recipe
from condense.recipes.stages import PLANNED, STAGES
from condense.recipes.validate import validate_recipe

__all__ = [
    "PLANNED",
    "STAGES",
    "MeasureConfig",
    "Recipe",
    "StageSpec",
    "load_recipe",
    "measure_model",
    "resume_run",
    "run_recipe",
    "validate_recipe",
]
