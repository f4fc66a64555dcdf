"""Model loading: embedded GGUF (cached as an HF dir), hub id, local dir, tiny random model."""

from smfexp.models.loading import ModelUnavailableError, load_model, load_tokenizer

__all__ = ["ModelUnavailableError", "load_model", "load_tokenizer"]
