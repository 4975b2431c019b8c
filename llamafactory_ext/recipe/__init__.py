"""Recipes: LLaMA-Factory arguments plus a `launch` block, declared (schema), read and validated (load)."""

from .load import PRESETS_FILE, RUN_RECIPE, Recipe, gpu_type, load_recipe, parse_overrides, stage_config

__all__ = ["PRESETS_FILE", "RUN_RECIPE", "Recipe", "gpu_type", "load_recipe", "parse_overrides", "stage_config"]
