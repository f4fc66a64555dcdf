"""Full finetuning: every weight trains (the most forgetting-prone baseline)."""

from __future__ import annotations

from pathlib import Path

from smfexp.methods.base import FinetuneModule


class FullFinetune(FinetuneModule):
    method_name = "full"

    def prepare_model(self) -> None:
        self.model.requires_grad_(True)

    def save_trained(self, directory: Path) -> Path:
        target = Path(directory) / "full"
        self.model.save_pretrained(target, safe_serialization=True)
        return target
