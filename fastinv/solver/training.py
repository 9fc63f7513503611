"""Self-supervised DeepInv training (`fastinv train`): the solver learns each step's exact fixed point.

The recipe is `fastinv.solver.recipe.SolverTrainConfig`; the loss log, its plot and the target report are
in `fastinv.solver.training_log`.

A run is `rounds` rounds of two phases (DAgger-style: collect where the current solver goes, then fit):
1. Collect (`steps.collect_steps`): every crop is inverted with the current solver at each T of `steps`
   (e.g. 4, 6, 10, 25, 50); each step keeps the solver's inputs and the target f*, the step's fixed point
   f* = v_θ(z + h·f*, σ_next) solved to `tolerance` (relative residual) by Anderson acceleration, at most
   `max_evaluations` denoiser calls; the residual reached is logged per T and step. Round 0 runs the
   untrained solver (for the warm-start design: `warm_fixed_point`'s trajectories); each round adds its
   steps to those of the earlier rounds.
2. Fit: `epochs` passes over all collected steps in shuffled minibatches of `fit_batch`; AdamW with
   `warmup` linear steps, then a cosine decay to lr/10 within each round. Loss per step:
       warm-start design: ‖ε̂ − f*‖² / ‖v − f_prev‖²  (the correction in units of the step's own Δ, so T = 4
                          and T = 50 weigh alike);
       paper design:      ‖ε̂ − f*‖² (the paper's fixed-point loss, with converged targets).
   The denoiser never runs during the fit: targets are computed once, in the collect phase.

Distributed: under `torchrun` (WORLD_SIZE > 1) each rank collects and fits its shard of the crops, DDP
averages gradients (gloo on CPU, nccl on CUDA), rank 0 writes the checkpoints and the solver.
Checkpoints (`checkpoints`): one before round 0 and one after every epoch; collected steps are kept per
part, so `--resume` continues exactly where a run stopped, collection included.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from rich.progress import Progress
from torch.nn.parallel import DistributedDataParallel

from fastinv.conditioning import Conditioning
from fastinv.display import progress_bar
from fastinv.errors import FastinvError
from fastinv.files import json_writer, publish_files, publish_folder
from fastinv.models.base import FlowModel
from fastinv.solver import checkpoints
from fastinv.solver.data import encode, fixed_crops, source_images
from fastinv.solver.model import TorchSolver, check_solver_fits
from fastinv.solver.presets import preset
from fastinv.solver.recipe import SolverTrainConfig
from fastinv.solver.steps import Steps, collect_steps
from fastinv.solver.training_log import loss_png, read_log, target_report, write_log


@dataclass
class Position:
    """Where the run is: the round; whether its steps are collected; the next epoch; optimiser steps so far
    (in all, and when this round's fit began); the number of the last checkpoint."""

    round: int = 0
    collected: bool = False
    epoch: int = 0
    step: int = 0
    round_start: int = 0
    checkpoint: int = 0


def _world() -> tuple[int, int]:
    """(rank, world size); initialises torch.distributed under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return (dist.get_rank(), world) if world > 1 else (0, 1)


class SolverTrainer:
    """Holds the run's state; `run()` trains from `position` to the end of the last round."""

    def __init__(
        self,
        model: FlowModel,
        config: SolverTrainConfig,
        images: str | Path,
        out: Path,
        resume: bool = False,
        force: bool = False,
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
        chosen = preset(config.preset, **config.solver)
        try:
            check_solver_fits(chosen.config, model.codec.channels, self.cond)
        except FastinvError as err:
            raise FastinvError(
                f"{err} (preset {config.preset!r}: choose another with --set preset=...)"
            ) from None
        found = checkpoints.latest(out)
        if (out / "solver").exists() and not (resume or force):
            raise FastinvError(
                f"{out / 'solver'} exists: pass --force to replace it, or choose another --out"
            )
        if found is not None and not resume:
            raise FastinvError(f"{out} already holds a checkpoint: pass --resume, or choose another --out")
        if found is None and resume:
            raise FastinvError(f"--resume: no complete checkpoint in {out / checkpoints.FOLDER}")
        pixels = fixed_crops(
            source_images(images), size, config.crops_per_image, config.crop_scale, self.generator
        )
        per_rank = math.ceil(len(pixels) / self.world)
        self.shard = torch.tensor([(self.rank + self.world * i) % len(pixels) for i in range(per_rank)])
        self.x0 = encode(model, pixels[self.shard], config.batch_size)
        self.solver = chosen.network(**chosen.config).to(model.device).train()
        self.optimizer = torch.optim.AdamW(
            self.solver.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.position = Position()
        if found is not None:
            state = checkpoints.load(found, self.solver, self.optimizer, self.generator, asdict(config))
            try:
                self.position = Position(**state)
            except TypeError as err:
                raise FastinvError(f"cannot resume from {found}: position.json is damaged") from err
        self.network: torch.nn.Module = self.solver
        if self.world > 1:
            ids = [model.device.index] if model.device.type == "cuda" else None
            self.network = DistributedDataParallel(self.solver, device_ids=ids)
        self.autocast = torch.autocast("cuda", torch.bfloat16, enabled=model.device.type == "cuda")
        self.rows = read_log(out, self.position.step) if self.rank == 0 else []

    # -- collect ------------------------------------------------------------------------------------------

    def _parts(self) -> list[tuple[int, torch.Tensor]]:
        """(T, crop indices) of each collection part: every T × every batch of this rank's crops."""
        crops = torch.arange(len(self.x0))
        return [(t, chunk) for t in self.config.steps for chunk in crops.split(self.config.batch_size)]

    def _collect(self, progress: Progress) -> None:
        """This round's steps for this rank's crops, part by part (a part already on disk is kept)."""
        config, solver = self.config, TorchSolver(self.solver.eval())
        parts = self._parts()
        task = progress.add_task(f"round {self.position.round}: collect", total=len(parts))
        for part, (t, chunk) in enumerate(parts):
            path = checkpoints.steps_path(self.out, self.position.round, self.rank * 10_000 + part)
            if not path.is_file():
                sigmas = self.model.sigmas(t, tuple(self.x0.shape[-2:]))
                with torch.no_grad():
                    steps = collect_steps(
                        self.model.velocity,
                        solver,
                        self.x0[chunk],
                        chunk,
                        sigmas,
                        self.cond,
                        tolerance=config.tolerance,
                        max_evaluations=config.max_evaluations,
                        memory=config.anderson_memory,
                    )
                checkpoints.save_steps(path, steps)
            progress.advance(task)
        progress.remove_task(task)
        self.solver.train()

    def _collected(self, rounds: range) -> Steps:
        """The steps of `rounds` (this rank's)."""
        parts = [
            checkpoints.steps_path(self.out, r, self.rank * 10_000 + p)
            for r in rounds
            for p in range(len(self._parts()))
        ]
        return Steps.concat([checkpoints.load_steps(path) for path in parts])

    # -- fit ----------------------------------------------------------------------------------------------

    def _loss(self, steps: Steps, index: torch.Tensor) -> torch.Tensor:
        device = self.model.device
        v, z, f_prev, target = (getattr(steps, k)[index].to(device) for k in ("v", "z", "f_prev", "target"))
        sigma, sigma_next = steps.sigma[index].to(device), steps.sigma_next[index].to(device)
        x0 = self.x0[steps.crop[index].to(self.x0.device)]
        with self.autocast:
            if self.solver.warm_start:
                eps = self.network(v, z, x0, f_prev, sigma, sigma_next).float()
            else:
                batch, pooled = len(index), self.cond.pooled_embeds
                text = self.cond.prompt_embeds.to(device).float().expand(batch, -1, -1)
                pooled = None if pooled is None else pooled.to(device).float().expand(batch, -1)
                eps = self.network(v, z, x0, text, pooled, sigma, sigma_next).float()
        error = (eps - target).flatten(1).pow(2).mean(dim=1)
        if self.solver.warm_start:
            error = error / (v - f_prev).flatten(1).pow(2).mean(dim=1).clamp(min=1e-12)
        return error.mean()

    def _learning_rate(self, round_step: int, round_steps: int) -> float:
        config = self.config
        if round_step < config.warmup:
            return config.lr * (round_step + 1) / config.warmup
        progress = (round_step - config.warmup) / max(1, round_steps - config.warmup)
        return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))

    def _fit_epoch(self, steps: Steps, progress: Progress, task: Any, start: float) -> None:
        config, position = self.config, self.position
        batches = len(steps) // config.fit_batch or 1
        round_steps = batches * config.epochs
        order = torch.randperm(len(steps), generator=self.generator)
        pending: list[torch.Tensor] = []
        for b in range(batches):
            index = order[b * config.fit_batch : (b + 1) * config.fit_batch]
            lr = self._learning_rate(position.step - position.round_start, round_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            loss = self._loss(steps, index)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.solver.parameters(), config.grad_clip)
            self.optimizer.step()
            position.step += 1
            pending.append(loss.detach())
            if len(pending) == config.log_every or b == batches - 1:
                mean = float(torch.stack(pending).mean())
                if not math.isfinite(mean):
                    raise FastinvError(
                        f"training diverged: non-finite loss at step {position.step} (lower lr)"
                    )
                self.rows.append(
                    {
                        "step": position.step,
                        "round": position.round,
                        "epoch": position.epoch,
                        "loss": mean,
                        "seconds": round(time.perf_counter() - start, 2),
                    }
                )
                pending = []
                progress.update(task, description=f"round {position.round} fit: loss {mean:.3e}")
            progress.advance(task)

    def _checkpoint(self) -> None:
        self.position.checkpoint += 1
        if self.rank == 0:  # the log first: rows past the checkpoint are dropped on resume
            write_log(self.out, self.rows)
            checkpoints.save(
                self.out,
                self.position.checkpoint,
                self.solver,
                self.optimizer,
                self.generator,
                self.position,
                asdict(self.config),
            )

    # -- the run ------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Train to the end; write out/solver, loss.csv, loss.png, targets.json, log.json (rank 0)."""
        config, position = self.config, self.position
        console = Console()
        start = time.perf_counter() - (self.rows[-1]["seconds"] if self.rows else 0.0)
        if position.checkpoint == 0:
            self._checkpoint()  # the untrained solver: round 0 collection is resumable too
        with progress_bar(console, transient=False, disable=self.rank != 0) as progress:
            while position.round < config.rounds:
                if not position.collected:
                    self._collect(progress)
                    position.collected, position.epoch, position.round_start = True, 0, position.step
                    self._checkpoint()
                steps = self._collected(range(position.round + 1))
                batches = len(steps) // config.fit_batch or 1
                task = progress.add_task(
                    f"round {position.round} fit",
                    total=batches * config.epochs,
                    completed=batches * position.epoch,
                )
                for _ in range(position.epoch, config.epochs):
                    self._fit_epoch(steps, progress, task, start)
                    position.epoch += 1
                    if position.epoch == config.epochs:  # the round is done: collect next
                        position.round, position.collected, position.epoch = position.round + 1, False, 0
                    self._checkpoint()
                progress.remove_task(task)
                if self.rank == 0:
                    console.print(
                        f"round {position.round - 1}: {len(steps)} steps, loss {self.rows[-1]['loss']:.3e}, "
                        f"{time.perf_counter() - start:.0f} s"
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
            with publish_folder(self.out / "solver") as staging:
                self.solver.save_pretrained(staging)
            reports = {
                self.out / "train_config.json": json_writer(asdict(config)),
                self.out / "targets.json": json_writer(self._target_summary()),
                **({self.out / "loss.png": loss_png(self.rows)} if self.rows else {}),
                self.out / "log.json": json_writer(summary),  # last: the run's reports are complete
            }
            publish_files(reports)
        if self.world > 1:
            dist.barrier()
        return summary

    def _target_summary(self) -> dict[str, Any]:
        """How exact the targets were (rank 0's crops): per round and T, the worst step's residual, the
        median step's, the share converged and the mean denoiser calls per solve; and the per-step table."""
        summary: dict[str, Any] = {
            "tolerance": self.config.tolerance,
            "max_evaluations": self.config.max_evaluations,
        }
        for round_ in range(self.config.rounds):
            rows = target_report(self._collected(range(round_, round_ + 1)), self.config.tolerance)
            by_t = {}
            for t in sorted({r["T"] for r in rows}):
                mine = [r for r in rows if r["T"] == t]
                by_t[str(t)] = {
                    "max_residual": max(r["max_residual"] for r in mine),
                    "median_residual": sorted(r["median_residual"] for r in mine)[len(mine) // 2],
                    "converged": sum(r["converged"] for r in mine) / len(mine),
                    "mean_evaluations": sum(r["mean_evaluations"] for r in mine) / len(mine),
                }
            summary[f"round {round_}"] = {"by_T": by_t, "steps": rows}
        return summary


def train_solver(
    model: FlowModel,
    config: SolverTrainConfig,
    images: str | Path,
    out: Path,
    *,
    resume: bool = False,
    force: bool = False,
) -> dict[str, Any]:
    """Train a DeepInv solver for `model` on `images` ("skimage" or a folder); write it to out/solver.

    An existing out/solver is replaced only with `force` (or when resuming the run that will write it)."""
    if out.exists() and not out.is_dir():
        raise FastinvError(f"--out {out} is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise FastinvError(f"cannot create --out {out}: {err.strerror or err}") from err
    return SolverTrainer(model, config, images, out, resume, force).run()


__all__ = ["train_solver"]
