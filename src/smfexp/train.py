"""``python -m smfexp.train``: compose the config, print it, run one experiment."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")

log = logging.getLogger("smfexp.train")


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    from smfexp.errors import friendly_errors
    from smfexp.runner import train

    print(OmegaConf.to_yaml(cfg, resolve=False), file=sys.stderr)
    with friendly_errors():
        results = train(cfg)
    return results.get("objective")


if __name__ == "__main__":
    main()
