"""``python -m smfexp.retrofit``: heal memory layers on the background corpus (cached)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")


@hydra.main(config_path=CONFIG_DIR, config_name="retrofit", version_base="1.3")
def main(cfg: DictConfig) -> None:
    from smfexp.errors import friendly_errors
    from smfexp.models.loading import load_model
    from smfexp.run_config import RetrofitRunConfig
    from smfexp.stages.retrofit import ensure_retrofit

    with friendly_errors():
        run = RetrofitRunConfig.from_hydra(cfg)  # one-line errors before the model loads
        model, tokenizer = load_model(run.model)
        directory, report = ensure_retrofit(model, tokenizer, run.model, run.memory,
                                            run.retrofit, data_dir=run.data_dir)
    losses = report["heldout_loss"]
    print(f"retrofit checkpoint: {directory}", file=sys.stderr)
    print(json.dumps({"heldout_loss": losses, "seconds": round(report["seconds"], 1)}, indent=2))


if __name__ == "__main__":
    main()
