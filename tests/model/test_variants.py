"""Every encoder x latent combination trains: its loss falls over a few optimisation steps."""

import numpy as np
import pytest
import torch

from app.model.config import ArchitectureConfig
from app.model.modules.encoders import ENCODER_CHOICES
from app.model.modules.latents import LATENT_CHOICES
from app.model.tokenizer import Tokenizer
from app.model.vae import Batch, SequenceVAE


@pytest.fixture(scope="module")
def batches(tiny_corpus_rows):
    texts = [r["text"] for r in tiny_corpus_rows][:96]
    tokenizer = Tokenizer.train(texts, vocab_size=200, max_tokens=24)
    ids = tokenizer.encode(texts)
    return tokenizer.vocab_size, [Batch.from_ids(ids[i : i + 32]) for i in range(0, len(ids), 32)]


@pytest.mark.parametrize("latent", LATENT_CHOICES)
@pytest.mark.parametrize("encoder", ENCODER_CHOICES)
def test_variant_trains_with_falling_loss(encoder, latent, batches):
    vocab_size, data = batches
    torch.manual_seed(0)
    arch = ArchitectureConfig(
        encoder=encoder, latent=latent, embedding_dim=24, encoder_hidden=24, feature_size=24,
        latent_dim=8, decoder_hidden=32, dropout=0.0, kappa=20.0,
    )
    model = SequenceVAE(vocab_size, arch)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    rng = np.random.default_rng(0)
    losses = []
    for _epoch in range(12):
        epoch_loss = 0.0
        for batch in data:
            out = model(batch, rng, word_dropout=0.0, free_bits=0.0)
            loss = out.reconstruction.mean() + 0.1 * out.kl_penalty
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item()
            assert torch.isfinite(loss)
        losses.append(epoch_loss / len(data))
    assert losses[-1] < 0.8 * losses[0], losses


def test_unknown_encoder_is_rejected_with_the_choices():
    from app.model.modules.encoders import build_encoder

    with pytest.raises(ValueError, match="bilstm"):
        build_encoder("transformer", vocab_size=10, embedding_dim=4, hidden_size=4, num_layers=1,
                      dropout=0.0, pooling="mean", feature_size=4)
