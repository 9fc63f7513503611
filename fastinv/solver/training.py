"""Self-supervised DeepInv training (`fastinv train`): the fixed-point loss, pseudo-labels, the T curriculum.

Per inversion step (σ_cur → σ_next, h = σ_next − σ_cur) of a batch rolled out with the current solver:
    v = v_θ(z, σ_next);  ε̂ = S(v, z, x0, c, σ_cur, σ_next);
    ε̄ = sg[e_K] with e_0 = ε̂, e_{j+1} = v_θ(z + h·e_j, σ_next)     (K = inner_iterations, denoiser no grad)
    target = ε̄ in round 0 or without pseudo-labels; λ1·ε̄ + λ2·ε* in later rounds, where ε* comes from
             `pseudo_labels` with the previous round's solver; from round `pure_pseudo_from_round` on, the
             first half of the inversion steps (k < T/2, the clean end) uses ε* alone;
    loss = ‖ε̂ − target‖² (mean); one AdamW step; z ← z + h·ε̂ (plus the method's optional blend).
A round runs the curriculum, e.g. T = 1, 5, 10, 25, 50 with fewer epochs as T grows.

Distributed: under `torchrun` (WORLD_SIZE > 1) each rank trains on its shard of the crops, DDP averages
gradients (gloo on CPU, nccl on CUDA) and rank 0 writes. Checkpoints after every epoch hold the solver,
the previous round's solver (the pseudo-label source), the optimiser, the crop generator and the position,
so `--resume` continues exactly where a run stopped.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from torch.nn.parallel import DistributedDataParallel

from fastinv.conditioning import Conditioning
from fastinv.errors import FastinvError
from fastinv.kernels import deepinv_update
from fastinv.methods.base import sigma_batch, step_size, upward_steps
from fastinv.methods.deepinv import in_window
from fastinv.models.base import FlowModel
from fastinv.solver.data import encode, fixed_crops, source_images
from fastinv.solver.model import TorchSolver, check_solver_fits
from fastinv.solver.network import DeepInvSolver
from fastinv.solver.presets import preset
from fastinv.solver.pseudo_labels import pseudo_labels

DEFAULT_RECIPE = Path(__file__).with_name("default_solver.json")
"""The recipe of the solver shipped with the default model."""
CHECKPOINT = "checkpoint"


@dataclass(frozen=True)
class SolverTrainConfig:
    """One training run. `curriculum` is [[T, epochs], ...]; `size` the crop side in pixels (None: the
    model's fixed resolution); `solver` overrides the preset's DeepInvSolver arguments."""

    seed: int
    preset: str
    solver: dict[str, Any]
    size: int | None
    crops_per_image: int
    crop_scale: tuple[float, float]
    prompt: str
    batch_size: int
    rounds: int
    curriculum: tuple[tuple[int, int], ...]
    inner_iterations: int
    pseudo_labels: bool
    lambda_fixed: float
    lambda_pseudo: float
    interpolation_alpha: float
    pure_pseudo_from_round: int
    blend: float
    blend_window: tuple[float, float]
    lr: float
    weight_decay: float
    grad_clip: float
    log_every: int

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SolverTrainConfig:
        names = {f.name for f in fields(cls)}
        unknown, missing = set(values) - names, names - set(values)
        if unknown or missing:
            problem = f"unknown {sorted(unknown)}" if unknown else f"missing {sorted(missing)}"
            raise FastinvError(f"solver training config: {problem}")
        values = dict(values)
        values["crop_scale"] = tuple(values["crop_scale"])
        values["blend_window"] = tuple(values["blend_window"])
        values["curriculum"] = tuple((int(t), int(e)) for t, e in values["curriculum"])
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def read(cls, path: Path, overrides: dict[str, Any] | None = None) -> SolverTrainConfig:
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise FastinvError(f"cannot read training config {path}: {err}") from err
        return cls.from_dict(values | (overrides or {}))

    def validate(self) -> None:
        if self.inner_iterations < 1:
            raise FastinvError("inner_iterations must be >= 1 (with 0 the fixed-point target is ε̂ itself)")
        if not self.curriculum or any(t < 1 or e < 1 for t, e in self.curriculum):
            raise FastinvError(f"curriculum must be [[T >= 1, epochs >= 1], ...], got {self.curriculum}")
        if self.rounds < 1 or self.batch_size < 1 or self.crops_per_image < 1:
            raise FastinvError("rounds, batch_size and crops_per_image must be >= 1")

    def steps_per_round(self, crops: int) -> int:
        """Optimiser steps in one round when a rank holds `crops` crops."""
        return sum(t * e * math.ceil(crops / self.batch_size) for t, e in self.curriculum)


@dataclass
class Position:
    """The next epoch to run: round, index into the curriculum, epoch within that stage."""

    round: int = 0
    stage: int = 0
    epoch: int = 0
    step: int = 0

    def advance(self, config: SolverTrainConfig) -> None:
        self.epoch += 1
        if self.epoch >= config.curriculum[self.stage][1]:
            self.stage, self.epoch = self.stage + 1, 0
        if self.stage >= len(config.curriculum):
            self.round, self.stage = self.round + 1, 0

    def done(self, config: SolverTrainConfig) -> bool:
        return self.round >= config.rounds


def _world() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


def _save_checkpoint(
    out: Path,
    solver: DeepInvSolver,
    label_solver: DeepInvSolver | None,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    position: Position,
) -> None:
    """out/checkpoint/: solver/, label_solver/ (if any), trainer.pt, position.json; via a temp folder."""
    tmp = out / f".{CHECKPOINT}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    solver.save_pretrained(tmp / "solver")
    if label_solver is not None:
        label_solver.save_pretrained(tmp / "label_solver")
    state = {"optimizer": optimizer.state_dict(), "generator": generator.get_state()}
    torch.save(state, tmp / "trainer.pt")
    (tmp / "position.json").write_text(json.dumps(asdict(position)) + "\n")
    old = out / f".{CHECKPOINT}.old"
    shutil.rmtree(old, ignore_errors=True)
    if (out / CHECKPOINT).exists():
        (out / CHECKPOINT).rename(old)
    tmp.rename(out / CHECKPOINT)
    shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(
    out: Path, solver: DeepInvSolver, optimizer: torch.optim.Optimizer, generator: torch.Generator
) -> tuple[Position, DeepInvSolver | None]:
    folder = out / CHECKPOINT
    solver.load_state_dict(
        DeepInvSolver.from_pretrained(folder / "solver", use_safetensors=True).state_dict()
    )
    label_solver = None
    if (folder / "label_solver").is_dir():
        label_solver = DeepInvSolver.from_pretrained(folder / "label_solver", use_safetensors=True)
    state = torch.load(folder / "trainer.pt", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    generator.set_state(state["generator"])
    return Position(**json.loads((folder / "position.json").read_text())), label_solver


def plot_loss(rows: list[dict[str, Any]], path: Path) -> None:
    """Loss vs optimiser step, one colour per curriculum T, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for steps in sorted({r["T"] for r in rows}):
        picked = [r for r in rows if r["T"] == steps]
        ax.scatter([r["step"] for r in picked], [r["loss"] for r in picked], s=6, label=f"T = {steps}")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("‖ε̂ − target‖² (mean over log interval)")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _write_log(out: Path, rows: list[dict[str, Any]]) -> None:
    tmp = out / ".loss.csv.tmp"
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["step", "round", "T", "epoch", "loss", "seconds"])
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(out / "loss.csv")
    plot_loss(rows, out / "loss.png")


def _read_log(out: Path, upto_step: int) -> list[dict[str, Any]]:
    path = out / "loss.csv"
    if not path.is_file():
        return []
    with path.open() as f:
        rows = [
            {k: (float(v) if k in ("loss", "seconds") else int(v)) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]
    return [r for r in rows if r["step"] <= upto_step]


class SolverTrainer:
    """Holds the run's state; `run()` trains from `position` to the end of the last round."""

    def __init__(
        self, model: FlowModel, config: SolverTrainConfig, images: str | Path, out: Path, resume: bool = False
    ) -> None:
        self.model, self.config, self.out = model, config, out
        self.rank, self.world = _world()
        torch.manual_seed(config.seed)
        self.generator = torch.Generator().manual_seed(config.seed)
        size = config.size or (model.resolution[0] if model.resolution else None)
        if size is None or size % model.size_multiple:
            need = f"a multiple of {model.size_multiple}"
            raise FastinvError(
                f"training crop size {size} is not {need}"
                if size
                else f"{model.name} has no fixed resolution: set the crop size, e.g. --set size=512 ({need})"
            )
        self.cond: Conditioning = model.conditioning(config.prompt)
        settings = preset(config.preset, **config.solver)
        try:
            check_solver_fits(settings, model.codec.channels, self.cond)
        except FastinvError as err:
            raise FastinvError(
                f"{err} (preset {config.preset!r}: choose another with --set preset=...)"
            ) from None
        pixels = fixed_crops(
            source_images(images), size, config.crops_per_image, config.crop_scale, self.generator
        )
        per_rank = math.ceil(len(pixels) / self.world)
        shard = [(self.rank + self.world * i) % len(pixels) for i in range(per_rank)]
        self.x0 = encode(model, pixels[shard], config.batch_size)
        self.solver = DeepInvSolver(**settings).to(model.device).train()
        self.optimizer = torch.optim.AdamW(
            self.solver.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.position, self.label_solver = Position(), None
        if (out / CHECKPOINT).exists():
            if not resume:
                raise FastinvError(
                    f"{out} already holds a checkpoint: pass --resume, or choose another --out"
                )
            self.position, self.label_solver = _load_checkpoint(
                out, self.solver, self.optimizer, self.generator
            )
            if self.label_solver is not None:
                self.label_solver.to(model.device).eval().requires_grad_(False)
        self.network: torch.nn.Module = self.solver
        if self.world > 1:
            ids = [model.device.index] if model.device.type == "cuda" else None
            self.network = DistributedDataParallel(self.solver, device_ids=ids)
        self.autocast = torch.autocast("cuda", torch.bfloat16, enabled=model.device.type == "cuda")
        batch, pooled = config.batch_size, self.cond.pooled_embeds
        self.text = self.cond.prompt_embeds.to(model.device).float().expand(batch, -1, -1)
        self.pooled = None if pooled is None else pooled.to(model.device).float().expand(batch, -1)
        self.rows = _read_log(out, self.position.step) if self.rank == 0 else []

    def _labels(self, sigmas: torch.Tensor) -> torch.Tensor | None:
        if self.label_solver is None:
            return None
        solver = TorchSolver(self.label_solver)
        parts = [
            pseudo_labels(
                self.model.velocity,
                solver,
                chunk,
                sigmas,
                self.cond,
                alpha=self.config.interpolation_alpha,
                blend=self.config.blend,
                blend_window=self.config.blend_window,
            )
            for chunk in self.x0.split(self.config.batch_size)
        ]
        return torch.cat(parts)

    def _train_batch(
        self, x0: torch.Tensor, labels: torch.Tensor | None, sigmas: torch.Tensor, round_: int
    ) -> list[float]:
        """Roll the batch out over the schedule, one optimiser step per inversion step; the losses."""
        config, velocity, batch = self.config, self.model.velocity, x0.shape[0]
        text, pooled = self.text[:batch], None if self.pooled is None else self.pooled[:batch]
        steps, losses, z = len(sigmas) - 1, [], x0
        for i, sigma, sigma_next in upward_steps(sigmas):
            k, h = steps - 1 - i, step_size(sigma, sigma_next, z)
            s, s_next = sigma_batch(sigma, z), sigma_batch(sigma_next, z)
            with torch.no_grad():
                v = velocity(z, s_next, self.cond)
            with self.autocast:
                eps = self.network(v, z, x0, text, pooled, s, s_next).float()
            with torch.no_grad():
                # fixed-point target: re-evaluate the denoiser where ε̂ lands, K times
                target = eps.detach()
                for _ in range(config.inner_iterations):
                    target = velocity(deepinv_update(z, target, h), s_next, self.cond)
                if labels is not None:
                    label = labels[:, k]
                    pure = round_ >= config.pure_pseudo_from_round and k < steps / 2
                    target = label if pure else config.lambda_fixed * target + config.lambda_pseudo * label
            loss = F.mse_loss(eps, target)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.solver.parameters(), config.grad_clip)
            self.optimizer.step()
            losses.append(loss.detach())
            if config.blend > 0 and in_window(k, steps, config.blend_window):
                h = (1 - config.blend) * h  # (1 − b)·(z + h·ε̂) + b·z
            z = deepinv_update(z, eps.detach(), h)
        return [float(x) for x in torch.stack(losses)]

    def run(self) -> dict[str, Any]:
        """Train to the end; write out/solver (the trained solver), loss.csv, loss.png, log.json (rank 0)."""
        config, position = self.config, self.position
        total = config.rounds * config.steps_per_round(len(self.x0))
        console = Console()
        start = time.perf_counter() - (self.rows[-1]["seconds"] if self.rows else 0.0)
        pending: list[float] = []
        labels_for: tuple[int, int] | None = None
        labels = None
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, disable=self.rank != 0) as progress:
            task = progress.add_task("training", total=total, completed=position.step)
            while not position.done(config):
                if (
                    position.stage == 0
                    and position.epoch == 0
                    and position.round > 0
                    and config.pseudo_labels
                ):
                    self.label_solver = copy.deepcopy(self.solver).eval().requires_grad_(False)
                steps, _ = config.curriculum[position.stage]
                sigmas = self.model.sigmas(steps, tuple(self.x0.shape[-2:]))
                if labels_for != (position.round, position.stage):
                    labels = self._labels(sigmas) if config.pseudo_labels else None
                    labels_for = (position.round, position.stage)
                order = torch.randperm(len(self.x0), generator=self.generator)
                for chunk in order.split(config.batch_size):
                    x0 = self.x0[chunk]
                    batch_labels = None if labels is None else labels[chunk]
                    for loss in self._train_batch(x0, batch_labels, sigmas, position.round):
                        position.step += 1
                        pending.append(loss)
                        progress.update(
                            task, advance=1, description=f"round {position.round} T={steps} loss {loss:.2e}"
                        )
                        if len(pending) == config.log_every:
                            self._log(pending, position, steps, start)
                            pending = []
                if pending:
                    self._log(pending, position, steps, start)
                    pending = []
                if self.rank == 0:
                    console.print(
                        f"round {position.round} T={steps} epoch {position.epoch}: "
                        f"loss {self.rows[-1]['loss']:.3e}, {time.perf_counter() - start:.0f} s"
                    )
                position.advance(config)
                if self.rank == 0:  # the log first: rows past the checkpoint are dropped on resume
                    _write_log(self.out, self.rows)
                    _save_checkpoint(
                        self.out, self.solver, self.label_solver, self.optimizer, self.generator, position
                    )
        summary = {
            "optimizer_steps": position.step,
            "seconds": time.perf_counter() - start,
            "final_loss": self.rows[-1]["loss"] if self.rows else None,
            "crops": len(self.x0) * self.world,
            "world_size": self.world,
            "device": str(self.model.device),
            "parameters": sum(p.numel() for p in self.solver.parameters()),
            "torch": torch.__version__,
        }
        if self.rank == 0:
            self._write_solver()
            (self.out / "train_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
            (self.out / "log.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.world > 1:
            dist.barrier()
        return summary

    def _log(self, losses: list[float], position: Position, steps: int, start: float) -> None:
        if self.rank == 0:
            self.rows.append(
                {
                    "step": position.step,
                    "round": position.round,
                    "T": steps,
                    "epoch": position.epoch,
                    "loss": sum(losses) / len(losses),
                    "seconds": round(time.perf_counter() - start, 2),
                }
            )

    def _write_solver(self) -> None:
        tmp = self.out / ".solver.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        self.solver.save_pretrained(tmp)
        shutil.rmtree(self.out / "solver", ignore_errors=True)
        tmp.rename(self.out / "solver")


def train_solver(
    model: FlowModel,
    config: SolverTrainConfig,
    images: str | Path,
    out: Path,
    *,
    resume: bool = False,
) -> dict[str, Any]:
    """Train a DeepInv solver for `model` on `images` ("skimage" or a folder); write it to out/solver."""
    out.mkdir(parents=True, exist_ok=True)
    return SolverTrainer(model, config, images, out, resume).run()


__all__ = ["DEFAULT_RECIPE", "SolverTrainConfig", "train_solver"]
