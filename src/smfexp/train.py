"""``python -m smfexp.train``: compose the config, print it, run one experiment.

Every failed job writes ``results.json`` with ``status: failed`` (the report shows it as
failed). In a multirun the other jobs still run (Hydra records the failure and the sweep exits
non-zero at the end; Optuna marks the trial failed); a single run prints the error and exits 2.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")

log = logging.getLogger("smfexp.train")


class _DropAdvert(logging.Filter):
    """Lightning logs an advert for its hosted logger on every fit; it is not about the run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_DROP_ADVERT = _DropAdvert()  # one instance: addFilter ignores repeats across multirun jobs


@hydra.main(config_path=CONFIG_DIR, config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from smfexp.errors import RunInterrupted, record_failure, user_error_message
    from smfexp.run_config import TrainConfig
    from smfexp.runner import train

    print(OmegaConf.to_yaml(cfg, resolve=False), file=sys.stderr)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_DROP_ADVERT)
    try:
        results = train(TrainConfig.from_hydra(cfg))  # the config, read once: typos fail here
    except Exception as err:
        message = user_error_message(err)
        record_failure(cfg, err, message)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            log.error("job failed: %s", message or repr(err))
            raise
        if message is None:
            raise
        print(f"error: {message}\n(add hydra.verbose=smfexp for the traceback)",
              file=sys.stderr)
        sys.exit(128 + err.signum if isinstance(err, RunInterrupted) else 2)
    value = results.get("objective")  # None when it could not be computed (results.json errors)
    return math.nan if value is None else float(value)


if __name__ == "__main__":
    main()
