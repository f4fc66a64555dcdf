"""Rewrite the absolute machine paths in run outputs and reports as paths a reader can follow.

Results are made on one machine (``/work/exp2``, ``/root/.cache``) and read on another, so a
committed ``results.json``, ``.hydra/*.yaml``, ``train.log``, CSV or ``summary.md`` should say
where a thing is relative to the repository, not where it was on the machine that made it.
``python -m smfexp.report --relocate DIR`` applies :func:`relocate_tree`; it only rewrites the
path prefixes it recognises, leaves every other byte as it was, writes each changed file
atomically and changes nothing on a second run.

How an absolute path is rewritten, first match wins:

1. a run's own recorded output dir (results.json ``output_dir``, ``.hydra/hydra.yaml``
   ``output_dir``) -> where that run dir is now, relative to the repository;
2. a checkout it was made in (the repository, every Hydra ``cwd:``) -> relative to it
   (the checkout itself -> ``.``);
3. ``.../.cache/smfexp/<rest>`` -> ``$SMFEXP_CACHE/<rest>``;
4. from its first ``results`` / ``outputs`` / ``conf`` / ``data`` / ``docs`` folder on
   (``/work/shared/data/x.jsonl`` -> ``data/x.jsonl``, the repository's data link);
5. anything else stays and is listed, for a person to look at.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from smfexp.utils.io import atomic_file

# top-level folders that hold machine-specific paths (a path under one of them is absolute
# and names this machine); a path must start with one to be rewritten
MACHINE_ROOTS = ("work", "root", "home", "tmp", "Users", "mnt", "scratch", "data", "private",
                 "var", "opt", "srv", "nfs", "lustre", "gpfs")
ANCHORS = ("results", "outputs", "conf", "data", "docs")
CACHE = ".cache/smfexp"
CACHE_VAR = "$SMFEXP_CACHE"
TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".csv", ".log", ".txt")
REPORT_FILES = ("summary.md",)
# an absolute path's start; it ends before whitespace, quotes, brackets of prose, or a comma
# (a CSV field separator: the prefix that is rewritten never holds one)
_ROOTS = "|".join(MACHINE_ROOTS)
_ABSOLUTE = re.compile(rf"(?<![\w.~$/])/(?:{_ROOTS})(?:/[^\s\"'`<>|,;()]*)?")
_CWD = re.compile(r"^\s*cwd:\s*(/\S+)\s*$", re.MULTILINE)
_HYDRA_OUTPUT_DIR = re.compile(r"^\s*output_dir:\s*(/.+?)\s*$", re.MULTILINE)


@dataclass
class Relocation:
    """What :func:`relocate_tree` did: the files it rewrote and the absolute paths it left
    (file -> paths) because no rule named them."""

    changed: list[Path] = field(default_factory=list)
    left: dict[Path, list[str]] = field(default_factory=dict)


@dataclass(frozen=True)
class Rules:
    """The prefixes of one tree: run output dirs -> where they are now, and the checkouts
    the runs were made in; both as absolute strings, longest first."""

    run_dirs: Mapping[str, str]
    checkouts: tuple[str, ...]


def repository_of(path: Path) -> Path:
    """The git checkout holding ``path`` (its ``.git``), else the current directory."""
    for folder in (path.resolve(), *path.resolve().parents):
        if (folder / ".git").exists():
            return folder
    return Path.cwd().resolve()


def text_files(root: Path) -> Iterator[Path]:
    """The files of ``root`` that may name machine paths (outputs and reports), .git aside."""
    for path in sorted(root.rglob("*")):
        if ".git" in path.relative_to(root).parts or not path.is_file():
            continue
        if path.suffix in TEXT_SUFFIXES or path.name in REPORT_FILES:
            yield path


def _relative(path: Path, repo: Path) -> str:
    return Path(os.path.relpath(path.resolve(), repo)).as_posix()


def _recorded_output_dir(run_dir: Path) -> list[str]:
    """The absolute output dirs a run recorded for itself (results.json, hydra.yaml)."""
    found = []
    try:
        results = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        if isinstance(results, dict) and str(results.get("output_dir", "")).startswith("/"):
            found.append(str(results["output_dir"]))
    except (OSError, ValueError):
        pass
    hydra = run_dir / ".hydra" / "hydra.yaml"
    if hydra.is_file():
        found += _HYDRA_OUTPUT_DIR.findall(hydra.read_text(encoding="utf-8"))
    return found


def find_rules(root: Path, repo: Path) -> Rules:
    """Rules 1 and 2 for ``root``: every run dir's recorded output dir and every checkout
    named by a Hydra ``cwd:`` under it, plus the repository itself."""
    run_dirs: dict[str, str] = {}
    checkouts = {str(repo)}
    for path in text_files(root):
        run_dir = {"results.json": path.parent, "hydra.yaml": path.parent.parent}.get(path.name)
        if run_dir is not None:
            for recorded in _recorded_output_dir(run_dir):
                run_dirs.setdefault(recorded.rstrip("/"), _relative(run_dir, repo))
        if path.suffix in (".yaml", ".yml"):
            checkouts.update(c.rstrip("/") for c in _CWD.findall(path.read_text("utf-8")))
    longest = sorted(run_dirs, key=len, reverse=True)
    return Rules({k: run_dirs[k] for k in longest},
                 tuple(sorted(checkouts, key=len, reverse=True)))


def relocate_path(path: str, checkouts: Iterable[str]) -> str | None:
    """Rules 2-4 for one absolute path; None when none applies."""
    for checkout in checkouts:
        if path == checkout:
            return "."
        if path.startswith(checkout + "/"):
            return path[len(checkout) + 1:]
    if f"/{CACHE}/" in path or path.endswith(f"/{CACHE}"):
        rest = path.split(f"/{CACHE}", 1)[1]
        return CACHE_VAR + rest
    parts = path.split("/")
    for i, part in enumerate(parts[1:], 1):
        # a data source names its parts in brackets: ``local:/x/data[c4+wiki]``
        if part in ANCHORS or part.split("[", 1)[0] in ANCHORS:
            return "/".join(parts[i:])
    return None


def _run_dir_pattern(run_dirs: Iterable[str]) -> re.Pattern[str] | None:
    alternatives = "|".join(re.escape(d) for d in run_dirs)
    if not alternatives:
        return None
    return re.compile(rf"(?<![\w.~$/])(?:{alternatives})(?=$|[/\s\"',;)\]])")


def relocate_text(text: str, rules: Rules) -> tuple[str, list[str]]:
    """``text`` with its machine paths rewritten, and the absolute paths no rule names."""
    pattern = _run_dir_pattern(rules.run_dirs)
    if pattern is not None:
        text = pattern.sub(lambda m: rules.run_dirs[m.group(0)], text)
    left: list[str] = []

    def rewrite(match: re.Match[str]) -> str:
        found = relocate_path(match.group(0), rules.checkouts)
        if found is None:
            left.append(match.group(0))
            return match.group(0)
        return found

    return _ABSOLUTE.sub(rewrite, text), left


def _write_like(path: Path, text: str) -> None:
    """Replace ``path`` atomically, keeping its permission bits."""
    mode = path.stat().st_mode & 0o777
    with atomic_file(path, suffix=".tmp") as tmp:
        tmp.write_text(text, encoding="utf-8")
        os.chmod(tmp, mode)


def relocate_tree(root: str | Path, repo: str | Path | None = None) -> Relocation:
    """Rewrite the machine paths of every output and report file under ``root`` relative to
    ``repo`` (default: the checkout holding ``root``); files that change are rewritten
    atomically, the others are not touched."""
    root = Path(root).resolve()
    repo = Path(repo).resolve() if repo is not None else repository_of(root)
    rules = find_rules(root, repo)
    done = Relocation()
    for path in text_files(root):
        try:
            before = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        after, left = relocate_text(before, rules)
        if after != before:
            _write_like(path, after)
            done.changed.append(path)
        if left:
            done.left[path] = left
    return done


def relocation_summary(done: Relocation, root: Path) -> str:
    """What ``--relocate`` prints: files rewritten, and each path left (at most 20)."""
    lines = [f"{root}: rewrote {len(done.changed)} file(s)"]
    left = [(p, s) for p, found in done.left.items() for s in found]
    if left:
        lines.append(f"{len(left)} absolute path(s) left (no rule names them):")
        lines += [f"  {p}: {s}" for p, s in left[:20]]
    return "\n".join(lines)
