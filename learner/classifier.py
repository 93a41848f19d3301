"""A text classifier over an open label set: encoder, mean pooling, a head that grows a row per label."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn
from transformers import BatchEncoding, PreTrainedModel
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

from learner.encoder import mean_pool
from learner.snapshots import MODEL, Snapshot

HeadKind = Literal["linear", "cosine"]


class LabelLimitError(ValueError):
    """A batch would take the label set past its cap."""


@dataclass(frozen=True)
class Scored:
    label: str
    score: float


@dataclass(frozen=True)
class Prediction:
    label: str
    score: float
    top: list[Scored]


class OpenHead(nn.Module):
    """Linear or cosine-normalised (learned scale) head whose rows are added one label at a time."""

    def __init__(self, dim: int, kind: HeadKind = "linear") -> None:
        super().__init__()
        if kind not in ("linear", "cosine"):
            raise ValueError(f"head must be 'linear' or 'cosine', got {kind!r}")
        self.kind = kind
        self.weight = nn.Parameter(torch.empty(0, dim))
        self.bias = nn.Parameter(torch.empty(0)) if kind == "linear" else None
        # A cosine head needs a temperature to produce confident softmax outputs; it is learned.
        self.log_scale = nn.Parameter(torch.tensor(math.log(16.0))) if kind == "cosine" else None

    @property
    def rows(self) -> int:
        return self.weight.shape[0]

    def forward(self, embeddings: Tensor) -> Tensor:
        if self.kind == "cosine":
            unit = nn.functional.normalize(embeddings, dim=-1)
            return self.log_scale.exp() * unit @ nn.functional.normalize(self.weight, dim=-1).T
        return embeddings @ self.weight.T + self.bias

    def grow(self, new_rows: Tensor) -> None:
        """Append rows; the logits of existing labels are untouched."""
        new_rows = new_rows.to(self.weight.dtype)
        self.weight = nn.Parameter(torch.cat([self.weight.detach(), new_rows]))
        if self.bias is not None:
            self.bias = nn.Parameter(torch.cat([self.bias.detach(), new_rows.new_zeros(len(new_rows))]))

    def keep(self, rows: Tensor) -> None:
        """Keep only these rows, in this order; the logits of the kept labels are untouched."""
        self.weight = nn.Parameter(self.weight.detach()[rows])
        if self.bias is not None:
            self.bias = nn.Parameter(self.bias.detach()[rows])

    def resize(self, rows: int) -> None:
        """Make room for `rows` labels before loading a saved head of that size."""
        if rows != self.rows:
            self.grow(self.weight.new_zeros(rows - self.rows, self.weight.shape[1]))


class TextClassifier(nn.Module):
    """Encoder + mean pooling over real tokens + an open label head."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        encoder: PreTrainedModel,
        *,
        head: HeadKind = "linear",
        max_length: int = 128,
        max_labels: int = 10_000,
        imprint: bool = True,
    ) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.encoder = encoder
        self.head = OpenHead(encoder.config.hidden_size, head)
        self.max_length = max_length
        self.max_labels = max_labels
        self.imprint = imprint
        self.labels: list[str] = []
        self._index: dict[str, int] = {}

    @classmethod
    def from_snapshot(
        cls, tokenizer: PreTrainedTokenizerBase, encoder: PreTrainedModel, snapshot: Snapshot
    ) -> TextClassifier:
        """The classifier a snapshot holds, built on `encoder` (its weights are overwritten), ready to
        predict."""
        saved = snapshot.state["config"]
        classifier = cls(
            tokenizer,
            encoder,
            head=saved["head"],
            max_length=saved["max_length"],
            max_labels=saved["max_labels"],
        )
        classifier.set_labels(snapshot.state["labels"])
        classifier.load_state_dict(snapshot.tensors[MODEL])
        classifier.eval()
        return classifier

    @property
    def device(self) -> torch.device:
        return self.head.weight.device

    def tokenize(self, texts: list[str]) -> BatchEncoding:
        """Token ids and attention mask of `texts`, padded together, on the model's device."""
        batch = self.tokenizer(
            texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return batch.to(self.device)

    def embed(self, batch: BatchEncoding) -> Tensor:
        hidden = self.encoder(
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]
        ).last_hidden_state
        return mean_pool(hidden, batch["attention_mask"])

    def label_ids(self, labels: list[str]) -> Tensor:
        return torch.tensor([self._index[label] for label in labels], device=self.device)

    def unseen(self, labels: list[str]) -> list[str]:
        """Labels not in the head yet, in first-seen order; raises if they would pass the cap."""
        new = list(dict.fromkeys(label for label in labels if label not in self._index))
        if len(self.labels) + len(new) > self.max_labels:
            raise LabelLimitError(
                f"{len(new)} new label(s) would take the label set past its cap of {self.max_labels} "
                f"(it holds {len(self.labels)}); raise the cap or reuse existing labels"
            )
        return new

    def add_labels(self, new: list[str], embeddings: Tensor, labels: list[str]) -> None:
        """Grow one head row per new label, imprinted from the mean embedding of its examples."""
        if not new:
            return
        rows = torch.stack([self._initial_row(embeddings, labels, label) for label in new])
        self.head.grow(rows)
        for label in new:
            self._index[label] = len(self.labels)
            self.labels.append(label)

    def _initial_row(self, embeddings: Tensor, labels: list[str], label: str) -> Tensor:
        dim = embeddings.shape[1]
        if not self.imprint:
            return torch.randn(dim, device=embeddings.device) * 0.02
        picked = embeddings[[i for i, name in enumerate(labels) if name == label]].detach().float()
        row = nn.functional.normalize(picked.mean(0), dim=0)
        # Match the scale of rows already learned so a new label neither swamps nor vanishes.
        if self.head.kind == "linear" and self.head.rows:
            row = row * self.head.weight.detach().norm(dim=1).mean()
        return row

    def remove_labels(self, labels: set[str]) -> Tensor:
        """Drop these labels' head rows; the indices of the rows kept, in their order."""
        kept = torch.tensor(
            [i for i, label in enumerate(self.labels) if label not in labels],
            dtype=torch.long,
            device=self.device,
        )
        self.head.keep(kept)
        self.set_labels([label for label in self.labels if label not in labels])
        return kept

    def set_labels(self, labels: list[str]) -> None:
        self.labels = list(labels)
        self._index = {label: i for i, label in enumerate(self.labels)}
        self.head.resize(len(self.labels))

    def predict(self, texts: list[str], top_k: int = 1, batch_size: int = 32) -> list[Prediction]:
        """Top-k labels with softmax scores; texts are batched by length to cut padding."""
        if not self.labels:
            raise LookupError("no label has been learned yet; post feedback first")
        top_k = max(1, min(top_k, len(self.labels)))
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        results: list[Prediction | None] = [None] * len(texts)
        # Toggling the mode walks every module (half a millisecond); a served copy is already in eval mode.
        was_training = self.training
        if was_training:
            self.eval()
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                chunk = order[start : start + batch_size]
                probs = self.head(self.embed(self.tokenize([texts[i] for i in chunk]))).softmax(-1)
                scores, indices = probs.topk(top_k, dim=-1)
                for row, i in enumerate(chunk):
                    top = [
                        Scored(self.labels[j], float(s))
                        for s, j in zip(scores[row], indices[row], strict=True)
                    ]
                    results[i] = Prediction(top[0].label, top[0].score, top)
        if was_training:
            self.train()
        return results
