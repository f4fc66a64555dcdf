"""smfexp: Sparse Memory Finetuning experiments - gain on a target versus forgetting elsewhere."""

__version__ = "0.1.0"
