"""Product-key memory layers and the model surgery that adds them to HF decoders."""

from smfexp.memory.attach import (
    MODES,
    MemoryBlock,
    MemoryConfig,
    attach_memory,
    decoder_blocks,
    detach_memory,
    freeze_backbone,
    memories_are_silent,
    memory_blocks,
    memory_config,
    memory_layer_indices,
    memory_modules,
    memory_parameters,
    model_hidden_size,
    set_sparse_values,
)
from smfexp.memory.checkpoint import load_memory, read_memory_meta, save_memory
from smfexp.memory.pkm import ProductKeyMemory

__all__ = [
    "MODES",
    "MemoryBlock",
    "MemoryConfig",
    "ProductKeyMemory",
    "attach_memory",
    "decoder_blocks",
    "detach_memory",
    "freeze_backbone",
    "load_memory",
    "memories_are_silent",
    "memory_blocks",
    "memory_config",
    "memory_layer_indices",
    "memory_modules",
    "memory_parameters",
    "model_hidden_size",
    "read_memory_meta",
    "save_memory",
    "set_sparse_values",
]
