import pytest
import torch

from learner.encoder import ModelNotFoundError, default_model_path, load_encoder, mean_pool


def _embed(encoder_pair, texts: list[str]) -> torch.Tensor:
    tokenizer, model = encoder_pair
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch).last_hidden_state
    return torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)


def test_default_model_loads_offline_with_real_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pair = load_encoder(default_model_path())
    cat, kitten, market = _embed(
        pair, ["A cat sits on the mat.", "A kitten is sitting on a rug.", "Stock markets fell sharply today."]
    )
    assert pair[1].config.hidden_size == 384
    assert float(cat @ kitten) > float(cat @ market) + 0.3


def test_missing_directory_is_named() -> None:
    with pytest.raises(ModelNotFoundError, match="/no/such/dir"):
        load_encoder("/no/such/dir")


def test_uncached_hub_name_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="no-such-org/no-such-model"):
        load_encoder("no-such-org/no-such-model")


def test_tiny_model_shares_the_default_vocabulary(tiny_encoder) -> None:
    tokenizer, model = tiny_encoder
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 32
    assert model.config.vocab_size == tokenizer.vocab_size == 30522


def test_mean_pool_ignores_padding() -> None:
    hidden = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    assert mean_pool(hidden, torch.tensor([[1, 1, 0]])).tolist() == [[2.0, 2.0]]
