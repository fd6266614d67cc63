"""Weights: our checkpoint format, safe loading, converters from other layouts, downloads."""
