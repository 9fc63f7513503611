"""Training checkpoints that are safe at every instant: numbered folders, each complete before it counts.

OUT/checkpoints/000012/ holds solver/ (safetensors + config.json), trainer.safetensors (optimiser and
generator state: the tensors, with the optimiser's parameter groups and plain per-parameter values as JSON
metadata; nothing is unpickled), position.json, and last a file COMPLETE. A new checkpoint is written
under a staging name, renamed to its number, and only then are older ones removed, so a kill at any
point leaves the newest complete checkpoint in place; `latest` finds it.
Collected step data lives beside them (OUT/checkpoints/steps-rRR-KK.safetensors), written atomically.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from fastinv.errors import FastinvError
from fastinv.files import atomic_write, publish_folder
from fastinv.solver.steps import Steps

FOLDER = "checkpoints"
COMPLETE = "COMPLETE"
TRAINER = "trainer.safetensors"


def latest(out: Path) -> Path | None:
    """The newest complete checkpoint folder under out/checkpoints, or None."""
    root = out / FOLDER
    if not root.is_dir():
        return None
    complete = [p for p in root.iterdir() if p.name.isdigit() and (p / COMPLETE).is_file()]
    return max(complete, key=lambda p: int(p.name), default=None)


def save(
    out: Path,
    number: int,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    position: Any,
    recipe: dict[str, Any],
) -> Path:
    """Write checkpoint `number` (solver, optimiser, generator, position dataclass, the run's recipe);
    drop older ones."""
    folder = out / FOLDER / f"{number:06d}"
    with publish_folder(folder) as staging:
        (staging / "recipe.json").write_text(json.dumps(recipe, sort_keys=True) + "\n")
        network.save_pretrained(staging / "solver")
        save_trainer_state(staging / TRAINER, optimizer, generator)
        (staging / "position.json").write_text(json.dumps(asdict(position)) + "\n")
        (staging / COMPLETE).write_text("")
    for older in (out / FOLDER).iterdir():
        if older.name.isdigit() and int(older.name) < number:
            shutil.rmtree(older, ignore_errors=True)
    return folder


def load(
    folder: Path,
    network: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    recipe: dict[str, Any],
) -> dict[str, Any]:
    """Restore network, optimizer and generator from checkpoint `folder` of a run of `recipe`; returns its
    position dict. One-line errors for a checkpoint of another recipe and for damaged or foreign files
    (trainer.safetensors: tensors and JSON only)."""
    try:
        theirs = json.loads((folder / "recipe.json").read_text())
        mine = json.loads(json.dumps(recipe, sort_keys=True))
        changed = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if changed:
            detail = ", ".join(f"{k} {theirs.get(k)!r} → {mine.get(k)!r}" for k in changed[:3])
            raise FastinvError(
                f"cannot resume from {folder}: the run was started with another recipe ({detail})"
            )
        if (folder / "trainer.pt").is_file() and not (folder / TRAINER).is_file():
            raise FastinvError(
                f"cannot resume from {folder}: an older fastinv wrote it (trainer.pt, a pickle, is no longer "
                "read): train again without --resume"
            )
        weights = load_file(folder / "solver" / "diffusion_pytorch_model.safetensors")
        network.load_state_dict(weights)
        load_trainer_state(folder / TRAINER, optimizer, generator)
        position = json.loads((folder / "position.json").read_text())
        if not isinstance(position, dict):
            raise ValueError("position.json is not an object")
        return position
    except FastinvError:
        raise
    except Exception as err:  # OSError, a damaged safetensors, malformed metadata, a foreign state
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise FastinvError(f"cannot resume from {folder}: {first}") from err


def save_trainer_state(path: Path, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    """The optimiser's and generator's state as one safetensors file: "generator" (its uint8 state),
    "state.<param>.<key>" per tensor of the optimiser's state; metadata "param_groups" and "scalars"
    (<param>.<key> → a plain value, e.g. a step count kept as a number) as JSON."""
    saved = optimizer.state_dict()
    tensors, scalars = {"generator": generator.get_state()}, {}
    for param, entries in saved["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{param}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param}.{key}"] = value
    metadata = {"param_groups": json.dumps(saved["param_groups"]), "scalars": json.dumps(scalars)}
    save_file(tensors, str(path), metadata=metadata)


def load_trainer_state(path: Path, optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    """Inverse of `save_trainer_state`; ValueError for a file it did not write (`load` words the error)."""
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata() or {}
        tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 - a safe_open handle, no dict
    groups, scalars = json.loads(metadata["param_groups"]), json.loads(metadata["scalars"])
    if (
        not isinstance(groups, list)
        or not all(isinstance(g, dict) for g in groups)
        or not isinstance(scalars, dict)
    ):
        raise ValueError("trainer.safetensors: malformed optimiser metadata")
    # JSON has no tuples: a value that is one in the optimiser's own groups (AdamW's betas) is one again
    if len(groups) == len(optimizer.param_groups):  # (other counts: load_state_dict refuses them)
        for group, own in zip(groups, optimizer.param_groups, strict=True):
            tuples = {k: tuple(v) for k, v in group.items() if isinstance(v, list) and k != "params"}
            group.update({k: v for k, v in tuples.items() if isinstance(own.get(k), tuple)})
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        if name.startswith("state."):
            param, key = name.removeprefix("state.").split(".", 1)
            state.setdefault(int(param), {})[key] = tensor
    for name, value in scalars.items():
        param, key = name.split(".", 1)
        state.setdefault(int(param), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    generator.set_state(tensors["generator"])


def steps_path(out: Path, round_: int, part: int) -> Path:
    return out / FOLDER / f"steps-r{round_:02d}-{part:04d}.safetensors"


def save_steps(path: Path, steps: Steps) -> None:
    with atomic_write(path) as tmp:
        save_file({k: v.contiguous() for k, v in steps.tensors().items()}, str(tmp))


def load_steps(path: Path) -> Steps:
    try:
        return Steps(**load_file(path))
    except (OSError, TypeError, ValueError) as err:
        raise FastinvError(f"cannot read collected steps {path}: {err}") from err
