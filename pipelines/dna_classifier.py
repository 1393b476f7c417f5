"""DNA sequence classifier (LightningModule) shared by species classification and fine-tuning.

    DNAClassifier    a Mamba backbone (causal with last-position readout, bidirectional or reverse-complement-
                     equivariant with mean pooling), optionally initialised from a pretrained LM, and a linear head;
                     valid/test accuracy, per-class accuracy, MCC, macro F1 and AUROC (scikit-learn), and the valid
                     (latest validation) and test confusion matrices as CSV and PNG in the run folder.
    load_pretrained_backbone   (MambaConfig, backbone state dict) of a `mba dna pretrain` checkpoint or a
                     save_pretrained folder.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from mamba_bio_audio.dna import DNATokenizer
from mamba_bio_audio.io import atomic_path
from mamba_bio_audio.models import MambaForSequenceClassification, dna_mamba_config

from .common import EvaluatedModule


def load_pretrained_backbone(path: str | Path):
    """(MambaConfig, backbone state dict) from a Lightning checkpoint of `mba dna pretrain` (a Mamba LM) or from a
    `save_pretrained` folder (config.json + model.safetensors)."""
    from mamba_bio_audio.config import MambaConfig

    path = Path(path)
    if path.is_dir():
        from mamba_bio_audio import MambaLMHeadModel

        model = MambaLMHeadModel.from_pretrained(path)
        return model.config, model.backbone.state_dict()
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint")
    checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    hp = checkpoint.get("hyper_parameters", {})
    if hp.get("arch", "mamba") != "mamba" or "state_dict" not in checkpoint:
        raise ValueError(f"{path}: not a checkpoint of a Mamba `mba dna pretrain` run")
    config = MambaConfig(**hp["config"]) if hp.get("config") else dna_mamba_config(hp.get("model_size") or "1.4M")
    prefix = "model.backbone."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    return config, state


class DNAClassifier(EvaluatedModule):
    """Mamba sequence classifier. `class_names` (linked from the data module); the backbone is `pretrained` (a
    checkpoint or folder: its config and weights), else a paper `model_size` or `config` (MambaConfig fields);
    `bidirectional` runs BiMamba blocks (in/out projections tied between directions) and pools by mean, else the
    causal model reads out its last position (`pooling` overrides); `rc_equivariant` shares the weights between the
    two strands (Caduceus-PS: a sequence and its reverse complement get the same logits; pooled by mean);
    `rc_conjoin` averages the logits of each sequence and of its reverse complement at evaluation (Caduceus-Ph)."""

    def __init__(self, class_names: list[str], model_size: str | None = "1.4M", config: dict | None = None,
                 pretrained: str | None = None, bidirectional: bool = False, rc_equivariant: bool = False,
                 pooling: str | None = None, rc_conjoin: bool = False, lr: float = 1e-4, weight_decay: float = 0.1,
                 betas: tuple[float, float] = (0.9, 0.95), warmup: float = 0.1, final_lr_ratio: float = 0.1,
                 gradient_checkpointing: bool = False):
        super().__init__()
        self.save_hyperparameters()
        from mamba_bio_audio.config import MambaConfig

        state = None
        if pretrained:
            cfg, state = load_pretrained_backbone(pretrained)
            bidirectional, rc_equivariant = cfg.bidirectional, cfg.rc_equivariant
        else:
            fields = {"bidirectional": bidirectional, "rc_equivariant": rc_equivariant}
            cfg = MambaConfig(**{**config, **fields}) if config else dna_mamba_config(model_size, **fields)
        self.model = MambaForSequenceClassification(cfg, len(class_names),
                                                    pooling or ("mean" if bidirectional or rc_equivariant else "last"))
        if state is not None:
            self.model.backbone.load_state_dict(state)
        self.model.backbone.gradient_checkpointing = gradient_checkpointing
        self._eval: dict[str, list[torch.Tensor]] = {}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """input_ids (b, L) int64, attention_mask (b, L) of real positions (None: all) → logits (b, classes) fp32;
        with rc_conjoin outside training, the mean of the logits on the sequence and on its reverse complement."""
        logits = self.model(input_ids, attention_mask).float()
        if self.hparams.rc_conjoin and not self.training:
            flipped_mask = None if attention_mask is None else attention_mask.flip(-1)
            logits = (logits + self.model(DNATokenizer.reverse_complement(input_ids), flipped_mask).float()) / 2
        return logits

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["input_ids"], batch.get("attention_mask"))
        loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
        self.log_train("train/loss", loss, prog_bar=True)
        self.log_train("train/accuracy", (logits.argmax(-1) == batch["labels"]).float().mean())
        self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False)
        return loss

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str, kept: int) -> None:
        logits = self(batch["input_ids"], batch.get("attention_mask"))
        rows = torch.cat([logits.softmax(-1), batch["labels"][:, None].float(),
                          torch.nn.functional.cross_entropy(logits, batch["labels"], reduction="none")[:, None]], 1)
        self._eval.setdefault(split, []).append(rows[:kept])

    def _eval_end(self, split: str) -> None:
        names = self.hparams.class_names
        rows = self.gather_rows(torch.cat(self._eval.pop(split))).cpu().double().numpy()
        metrics = classification_metrics(rows[:, :len(names)], rows[:, len(names)].astype(int), names)
        accuracy = metrics.pop("accuracy")
        self.log(f"{split}/accuracy", accuracy, prog_bar=True)
        self.log_dict({f"{split}/loss": float(rows[:, -1].mean()), **{f"{split}/{k}": v for k, v in metrics.items()
                                                                        if k != "confusion"}})
        if self.trainer.is_global_zero and not self.trainer.sanity_checking:
            data = self.trainer.datamodule
            where = f", windows of {data.seq_len:,} bases" if hasattr(data, "seq_len") else ""
            when = f", epoch {self.current_epoch}" if split == "valid" else ""
            save_confusion(metrics["confusion"], names, Path(self.trainer.default_root_dir), split,
                           title=f"{split} accuracy {accuracy:.3f}{where}{when}")


def classification_metrics(probs: np.ndarray, labels: np.ndarray, names: list[str]) -> dict:
    """accuracy, accuracy_<class>, mcc, f1 (macro) and auroc (binary, or one-vs-rest macro; NaN when a class is
    missing from `labels`) of class probabilities (n, C) against labels (n,), and the confusion matrix."""
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, matthews_corrcoef, roc_auc_score

    predicted = probs.argmax(1)
    matrix = confusion_matrix(labels, predicted, labels=list(range(len(names))))
    metrics = {"accuracy": float(accuracy_score(labels, predicted)),
               "mcc": float(matthews_corrcoef(labels, predicted)),
               "f1": float(f1_score(labels, predicted, average="macro", labels=list(range(len(names))),
                                    zero_division=0))}
    for i, (name, row) in enumerate(zip(names, matrix)):
        metrics[f"accuracy_{name}"] = float(row[i] / max(1, row.sum()))
    if len(set(labels.tolist())) == len(names):
        scores = probs[:, 1] if len(names) == 2 else probs / probs.sum(1, keepdims=True)
        metrics["auroc"] = float(roc_auc_score(labels, scores, multi_class="ovr", average="macro"))
    else:
        metrics["auroc"] = math.nan
    metrics["confusion"] = matrix
    return metrics


def save_confusion(matrix: np.ndarray, names: list[str], folder: Path, split: str, title: str = "") -> list[Path]:
    """folder/confusion_{split}.csv (rows: true class, columns: predicted) and confusion_{split}.png of the integer
    matrix (C, C), each written atomically (replacing the previous ones)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    folder.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = folder / f"confusion_{split}.csv", folder / f"confusion_{split}.png"
    with atomic_path(csv_path) as tmp:
        tmp.write_text("true\\predicted," + ",".join(names) + "\n" + "".join(
            f"{name}," + ",".join(str(int(v)) for v in row) + "\n" for name, row in zip(names, matrix)))
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 1.1 * len(names) + 1.5), dpi=120)
    ConfusionMatrixDisplay(matrix, display_labels=names).plot(ax=ax, colorbar=False, xticks_rotation=45)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return [csv_path, png_path]
