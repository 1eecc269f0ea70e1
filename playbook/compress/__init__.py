"""Compression techniques on coremltools' own compressors: the recipe catalogue, the Core ML side and
the PyTorch side.  Knows nothing of notebooks or stages (``playbook.stages.quantization`` uses it)."""
from playbook.compress.coreml_side import (ChannelRange, CompressedPackage, WeightLayer, channel_ranges,
                                           compress_converted, compress_mlmodel, compress_package,
                                           compressed_weight_count, weight_file_bytes, weight_layers)
from playbook.compress.recipes import (DEFAULT_RECIPES, RECIPES, SLOW_RECIPES, CompressionError, Recipe,
                                       available_recipes, get_recipe, recipe_rows, required_target)
from playbook.compress.torch_side import TorchCompression, compress_torch, subclassed_layers, zero_channel_layers

__all__ = ["ChannelRange", "CompressedPackage", "CompressionError", "DEFAULT_RECIPES", "RECIPES", "Recipe",
           "SLOW_RECIPES", "TorchCompression", "WeightLayer", "available_recipes", "channel_ranges",
           "compress_converted", "compress_mlmodel", "compress_package", "compress_torch", "compressed_weight_count",
           "get_recipe", "recipe_rows", "required_target", "subclassed_layers", "weight_file_bytes", "weight_layers",
           "zero_channel_layers"]
