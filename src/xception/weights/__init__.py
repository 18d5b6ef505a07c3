"""Weights: formats in (our safetensors files), our format out."""

from .native import WeightsMeta, is_native, load_native, read_metadata, read_weights, save_weights

__all__ = ["WeightsMeta", "is_native", "load_native", "read_metadata", "read_weights", "save_weights"]
