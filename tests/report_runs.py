"""A sweep job's Hydra files, as the report reads them: shared by the report tests."""

from __future__ import annotations

from pathlib import Path

CLASSES = {"smf": "SparseMemoryFinetune", "lora": "LoRAFinetune", "full": "FullFinetune"}


def write_job(run_dir: Path, method: str, lr: str, facts_seed: int, seed: int = 0,
              levers: dict[str, float] | None = None) -> None:
    """``.hydra/overrides.yaml`` and ``config.yaml`` of one job of a method's lr grid;
    ``levers``: further method keys (``replay_k``, ``ewc``), set on the command line."""
    hydra = run_dir / ".hydra"
    hydra.mkdir(parents=True)
    levers = levers or {}
    overrides = [f"method={method}", f"method.lr={lr}", f"seed={seed}",
                 f"data.facts_seed={facts_seed}", *(["selector=tfidf"] * (method == "smf")),
                 *(f"method.{k}={v}" for k, v in levers.items())]
    (hydra / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (hydra / "config.yaml").write_text(
        f"seed: {seed}\nmethod:\n  _target_: smfexp.methods.{method}.{CLASSES[method]}\n"
        f"  lr: {lr}\n" + ("  selector: tfidf\n" if method == "smf" else "")
        + "".join(f"  {k}: {v}\n" for k, v in levers.items())
        + f"data:\n  facts_seed: {facts_seed}\nmodel:\n  name: tiny\n"
        "eval:\n  protocol: harness\n")
