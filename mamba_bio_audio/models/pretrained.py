"""save_pretrained / from_pretrained: a JSON config and safetensors weights, both written atomically."""
from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from ..config import MambaConfig
from ..errors import InputError
from ..io import atomic_path

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class PretrainedMixin:
    """For models built as cls(config, **head_kwargs); `head_kwargs()` returns those extra arguments."""

    def head_kwargs(self) -> dict:
        return {}

    def save_pretrained(self, directory: str | os.PathLike, layout: str = "ours") -> Path:
        """Write config.json and model.safetensors under `directory` (created if missing). Each file appears
        complete or not at all: it is written to a temporary name and renamed. layout="reference": config.json and
        pytorch_model.bin as the paper's reference implementation (`mamba_ssm`) reads them (language models)."""
        from safetensors.torch import save_model

        directory = Path(directory)
        if layout == "reference":
            from .reference_layout import save_reference

            if not hasattr(self, "lm_head"):
                raise ValueError(f"{type(self).__name__}: the reference layout holds language models only")
            return save_reference(self, directory)
        if layout != "ours":
            raise ValueError(f"layout must be 'ours' or 'reference', got {layout!r}")
        directory.mkdir(parents=True, exist_ok=True)
        meta = {"architecture": type(self).__name__, **asdict(self.config), **self.head_kwargs()}
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_model(self, str(tmp), metadata={"format": "pt"})
        with atomic_path(directory / CONFIG_NAME) as tmp:
            tmp.write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None):
        """Load a model saved by `save_pretrained`, or (language models) a checkpoint of the paper's reference
        implementation: config.json with its "ssm_cfg" plus pytorch_model.bin or model.safetensors (see
        `reference_layout`). Raises FileNotFoundError / ValueError naming the file."""
        from safetensors.torch import load_model

        from .reference_layout import config_from_reference, is_reference_config, load_reference_weights, \
            read_reference_weights

        directory = Path(directory)
        config_file, weights_file = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file}: missing; a saved model directory holds {CONFIG_NAME} and "
                                    f"{WEIGHTS_NAME}")
        try:
            meta = json.loads(config_file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise InputError(f"{config_file}: not valid JSON ({err})") from None
        if not isinstance(meta, dict):
            raise InputError(f"{config_file}: expected a JSON object of configuration fields")
        if is_reference_config(meta):
            if cls.__name__ != "MambaLMHeadModel":
                raise InputError(f"{config_file}: a reference-implementation language model loads into "
                                 f"MambaLMHeadModel, not {cls.__name__}")
            model = cls(config_from_reference(meta, config_file))
            state, path = read_reference_weights(directory)
            load_reference_weights(model, state, path)
            return model.to(device=device, dtype=dtype)
        if not weights_file.is_file():
            raise FileNotFoundError(f"{weights_file}: missing; a saved model directory holds {CONFIG_NAME} and "
                                    f"{WEIGHTS_NAME}")
        architecture = meta.pop("architecture", cls.__name__)
        if architecture != cls.__name__:
            raise InputError(f"{config_file}: holds a {architecture}, not a {cls.__name__}")
        config_fields = set(MambaConfig.__dataclass_fields__)
        config = MambaConfig.from_dict({k: v for k, v in meta.items() if k in config_fields})
        model = cls(config, **{k: v for k, v in meta.items() if k not in config_fields})
        try:
            load_model(model, str(weights_file), strict=True)
        except RuntimeError as err:
            raise InputError(f"{weights_file}: does not match {config_file}: {err}") from None
        return model.to(device=device, dtype=dtype)
