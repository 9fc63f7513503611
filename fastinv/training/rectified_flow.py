"""Train the default model: a pixel-space SD3Transformer2DModel, rectified flow, on skimage photos.

    python -m fastinv.training.rectified_flow --config fastinv/training/default_model.json --out DIR

Recipe: z_σ = (1 − σ)·x0 + σ·ε with σ = sigmoid(N(0, s²)) (logit-normal), target v = ε − x0, MSE;
random crops (side = resolution × U_log(crop_scale), capped by the photo) resized to the resolution,
horizontal flips; captions encoded once by all-MiniLM-L6-v2, replaced by "" with p = caption_dropout
(so classifier-free guidance works); AdamW with linear warm-up, gradient clipping; the saved weights are
diffusers' EMAModel average (decay min(ema_decay, (1 + t)/(10 + t)) at step t, so early weights fade).
Uses CUDA (bf16 autocast) when available. The output is a model folder fastinv loads like any other.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
from diffusers.training_utils import EMAModel

from fastinv.files import atomic_write, publish_folder, save_csv, save_json
from fastinv.models.loading import PIXEL_PIPELINE
from fastinv.models.minilm import SPEC_FILE, SentenceEncoderPrompts, SentenceEncoderSpec
from fastinv.training.photos import CAPTIONS, TRAIN, photo_tensor

DEFAULT_CONFIG = Path(__file__).with_name("default_model.json")
TEXT_DIM = 384


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run; default_model.json holds the default model's recipe."""

    seed: int
    resolution: int
    patch_size: int
    num_layers: int
    num_attention_heads: int
    attention_head_dim: int
    text_max_length: int
    batch_size: int
    steps: int
    lr: float
    warmup_steps: int
    weight_decay: float
    grad_clip: float
    ema_decay: float
    caption_dropout: float
    crop_scale: tuple[float, float]
    logit_normal_std: float
    shift: float
    log_every: int
    save_every: int

    @classmethod
    def read(cls, path: Path) -> TrainConfig:
        values = json.loads(path.read_text())
        if "crop_scale" in values:
            values["crop_scale"] = tuple(values["crop_scale"])
        return cls(**values)


def build_transformer(config: TrainConfig) -> SD3Transformer2DModel:
    """The pixel-space SD3 transformer: RGB in and out, text width 384 (MiniLM)."""
    width = config.num_attention_heads * config.attention_head_dim
    return SD3Transformer2DModel(
        sample_size=config.resolution,
        patch_size=config.patch_size,
        in_channels=3,
        out_channels=3,
        num_layers=config.num_layers,
        attention_head_dim=config.attention_head_dim,
        num_attention_heads=config.num_attention_heads,
        joint_attention_dim=TEXT_DIM,
        caption_projection_dim=width,
        pooled_projection_dim=TEXT_DIM,
        pos_embed_max_size=config.resolution // config.patch_size,
    )


class CropSampler:
    """Random crops of the photos: side = resolution·U_log(lo, hi) (≤ the photo), resized, flipped."""

    def __init__(self, config: TrainConfig, generator: torch.Generator) -> None:
        self.photos = [photo_tensor(name) for name in TRAIN]
        self.config = config
        self.generator = generator

    def _uniform(self) -> float:
        return torch.rand((), generator=self.generator).item()

    def crop(self, index: int) -> torch.Tensor:
        photo = self.photos[index]
        height, width = photo.shape[-2:]
        lo, hi = (math.log(s) for s in self.config.crop_scale)
        side = min(round(self.config.resolution * math.exp(lo + (hi - lo) * self._uniform())), height, width)
        top = int(self._uniform() * (height - side + 1))
        left = int(self._uniform() * (width - side + 1))
        patch = photo[:, top : top + side, left : left + side][None]
        size = (self.config.resolution, self.config.resolution)
        patch = F.interpolate(patch, size=size, mode="bilinear", antialias=True, align_corners=False)[0]
        return patch.flip(-1) if self._uniform() < 0.5 else patch

    def batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels [B, 3, R, R] in [-1, 1] and the photo index of each crop [B]."""
        indices = torch.randint(len(self.photos), (self.config.batch_size,), generator=self.generator)
        return torch.stack([self.crop(int(i)) for i in indices]).clamp(-1, 1), indices


def write_model_folder(out: Path, transformer: SD3Transformer2DModel, config: TrainConfig) -> None:
    """Write a diffusers-style folder: transformer/, scheduler/, text_encoder/ spec, model_index.json.

    Each component folder is published whole (`files.publish_folder`) and model_index.json last, so a
    reader never loads a half-written component; other entries of `out` (training/, solver/) stay."""
    with publish_folder(out / "transformer") as staging:
        transformer.save_pretrained(staging)
    with publish_folder(out / "scheduler") as staging:
        FlowMatchEulerDiscreteScheduler(shift=config.shift).save_pretrained(staging)
    with publish_folder(out / "text_encoder") as staging:
        SentenceEncoderSpec(max_length=config.text_max_length).write(staging / SPEC_FILE)
    index = {
        "_class_name": PIXEL_PIPELINE,
        "transformer": ["diffusers", "SD3Transformer2DModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "text_encoder": ["fastinv", "SentenceEncoderPrompts"],
        "resolution": [config.resolution, config.resolution],
    }
    save_json(index, out / "model_index.json")


def write_loss(rows: list[dict[str, float]], out: Path) -> None:
    """training/loss.csv (step, mean loss over the log interval, seconds) and its plot, each atomically."""
    save_csv(rows, ("step", "loss", "seconds"), out / "loss.csv")
    plot_loss(rows, out / "loss.png")


def plot_loss(rows: list[dict[str, float]], path: Path) -> None:
    """Loss curve PNG: the mean loss of each log interval, log scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, [r["loss"] for r in rows], lw=1, label="loss (mean over log interval)")
    ax.set_xlabel("step")
    ax.set_ylabel("MSE of v")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


def train(config: TrainConfig, out: Path, device: torch.device | None = None) -> dict[str, float]:
    """Run the recipe; write the EMA model folder and training/{config.json, loss.csv, loss.png, log.json}."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    encoder = SentenceEncoderPrompts(SentenceEncoderSpec(max_length=config.text_max_length))
    prompts = ["", *(CAPTIONS[name] for name in TRAIN)]
    states, pooled = (t.to(device) for t in encoder.encode(prompts))
    sampler = CropSampler(config, generator)
    model = build_transformer(config).to(device).train()
    ema = EMAModel(model.parameters(), decay=config.ema_decay)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / config.warmup_steps))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    save_json(asdict(config), out / "training" / "config.json")
    rows: list[dict[str, float]] = []
    window_loss, window_steps = torch.zeros((), device=device), 0
    start = time.perf_counter()
    for step in range(1, config.steps + 1):
        x0, photo = sampler.batch()
        x0 = x0.to(device)
        keep = torch.rand(config.batch_size, generator=generator) >= config.caption_dropout
        text = torch.where(keep, photo + 1, torch.zeros_like(photo)).to(device)
        sigma = torch.sigmoid(torch.randn(config.batch_size, generator=generator) * config.logit_normal_std)
        sigma = sigma.to(device)
        noise = torch.randn(x0.shape, generator=generator).to(device)
        z = (1 - sigma[:, None, None, None]) * x0 + sigma[:, None, None, None] * noise
        with autocast:
            v = model(z, states[text], pooled[text], timestep=sigma * 1000, return_dict=False)[0]
        loss = F.mse_loss(v.float(), noise - x0)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        optimizer.step()
        schedule.step()
        ema.step(model.parameters())
        window_loss, window_steps = window_loss + loss.detach(), window_steps + 1
        if step % config.log_every == 0 or step == config.steps:
            elapsed = time.perf_counter() - start
            rows.append({"step": step, "loss": window_loss.item() / window_steps, "seconds": elapsed})
            window_loss, window_steps = torch.zeros((), device=device), 0
            print(
                f"step {step}/{config.steps} loss {rows[-1]['loss']:.4f} {step / elapsed:.2f} steps/s",
                flush=True,
            )
        if step % config.save_every == 0 or step == config.steps:
            ema.store(model.parameters())
            ema.copy_to(model.parameters())
            write_model_folder(out, model, config)
            ema.restore(model.parameters())
            write_loss(rows, out / "training")
    summary = {
        "steps": config.steps,
        "seconds": time.perf_counter() - start,
        "first_loss": rows[0]["loss"],
        "final_loss": rows[-1]["loss"],
        "device": str(device),
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch": torch.__version__,
    }
    save_json(summary, out / "training" / "log.json")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, help="override the config's step count")
    args = parser.parse_args()
    config = TrainConfig.read(args.config)
    if args.steps is not None:
        config = replace(config, steps=args.steps)
    print(json.dumps(train(config, args.out), indent=2))


if __name__ == "__main__":
    main()
