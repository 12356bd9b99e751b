"""The sequence-to-sequence VAE: encoder -> latent head -> decoder.

Shapes: B = batch, T = padded token length, D = latent dimension, V = vocabulary size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from app.model.config import ArchitectureConfig
from app.model.modules.decoders import LSTMDecoder
from app.model.modules.encoders import build_encoder
from app.model.modules.latents import Posterior, build_latent
from app.model.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID


@dataclass
class Batch:
    """Padded token ids for a batch of questions.

    tokens (B, T): subwords, PAD after the end; lengths (B,): true lengths (>= 1).
    """

    tokens: torch.Tensor
    lengths: torch.Tensor

    @classmethod
    def from_ids(cls, ids: list[list[int]], device: torch.device | str = "cpu") -> Batch:
        lengths = [max(1, len(seq)) for seq in ids]
        tokens = torch.full((len(ids), max(lengths)), PAD_ID, dtype=torch.long)
        for row, seq in enumerate(ids):
            tokens[row, : max(1, len(seq))] = torch.tensor(seq or [UNK_ID], dtype=torch.long)
        return cls(tokens.to(device), torch.tensor(lengths, dtype=torch.long, device=device))

    def decoder_io(self, word_dropout: float, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (inputs (B, T+1) = BOS + tokens with word dropout, targets (B, T+1) = tokens + EOS)."""
        batch, steps = self.tokens.shape
        bos = torch.full((batch, 1), BOS_ID, dtype=torch.long, device=self.tokens.device)
        inputs = torch.cat([bos, self.tokens], dim=1)
        if word_dropout > 0:
            drop = torch.rand(inputs.shape, generator=generator, device=inputs.device) < word_dropout
            drop[:, 0] = False
            inputs = inputs.masked_fill(drop & (inputs != PAD_ID), UNK_ID)
        targets = torch.cat([self.tokens, torch.full((batch, 1), PAD_ID, dtype=torch.long, device=inputs.device)], 1)
        targets[torch.arange(batch, device=inputs.device), self.lengths] = EOS_ID
        return inputs, targets


def corrupt(ids: list[int], rng: np.random.Generator) -> list[int]:
    """A noisy copy of a question's subword ids: one of token dropout (each piece with
    probability 0.15), a swap of two neighbouring pieces, or a deleted span of up to a quarter
    of the pieces. Questions of fewer than three pieces are returned as they are."""
    if len(ids) < 3:
        return list(ids)
    operation = rng.integers(3)
    if operation == 0:
        kept = [token for token in ids if rng.random() >= 0.15]
        return kept or [ids[int(rng.integers(len(ids)))]]
    if operation == 1:
        out = list(ids)
        at = int(rng.integers(len(ids) - 1))
        out[at], out[at + 1] = out[at + 1], out[at]
        return out
    span = int(rng.integers(1, max(1, len(ids) // 4) + 1))
    start = int(rng.integers(len(ids) - span + 1))
    return ids[:start] + ids[start + span :]


@dataclass
class VAEOutput:
    posterior: Posterior
    reconstruction: torch.Tensor  # (B,) nats per question
    kl_penalty: torch.Tensor  # scalar, free bits applied
    kl: torch.Tensor  # (B,) nats per question
    target_tokens: torch.Tensor  # (B,) tokens predicted per question, EOS included
    codes: torch.Tensor  # (B, D) the sampled code the decoder was conditioned on


class SequenceVAE(nn.Module):
    def __init__(self, vocab_size: int, arch: ArchitectureConfig):
        super().__init__()
        self.arch = arch
        self.encoder = build_encoder(
            arch.encoder,
            vocab_size=vocab_size,
            embedding_dim=arch.embedding_dim,
            hidden_size=arch.encoder_hidden,
            num_layers=arch.encoder_layers,
            dropout=arch.dropout,
            pooling=arch.pooling,
            feature_size=arch.feature_size,
            bag_features=arch.bag_features,
        )
        self.latent = build_latent(
            arch.latent, feature_size=arch.feature_size, latent_dim=arch.latent_dim, kappa=arch.kappa
        )
        self.decoder = LSTMDecoder(
            vocab_size,
            arch.embedding_dim,
            arch.decoder_hidden,
            arch.decoder_layers,
            arch.latent_dim,
            arch.dropout,
        )

    @property
    def metric(self) -> str:
        return self.latent.metric

    def posterior(self, batch: Batch) -> Posterior:
        """q(z|x): Posterior(mean (B, D), logvar (B, D) or None)"""
        return self.latent(self.encoder(batch.tokens, batch.lengths))

    def forward(
        self,
        batch: Batch,
        noise_rng: np.random.Generator,
        word_dropout: float,
        free_bits: float,
        torch_generator: torch.Generator | None = None,
        encoder_batch: Batch | None = None,
    ) -> VAEOutput:
        """Encodes `encoder_batch` (default: `batch`; a corrupted copy when denoising) and
        reconstructs `batch`."""
        posterior = self.posterior(encoder_batch if encoder_batch is not None else batch)
        z = self.latent.rsample(posterior, self.latent.draw_noise(noise_rng, batch.tokens.size(0), 1))[:, 0]
        inputs, targets = batch.decoder_io(word_dropout, torch_generator)
        logits = self.decoder(inputs, z)  # (B, T+1, V)
        token_nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=PAD_ID, reduction="none")
        kl_penalty, kl = self.latent.kl_penalty(posterior, free_bits)
        return VAEOutput(posterior, token_nll.sum(1), kl_penalty, kl, (targets != PAD_ID).sum(1), z)
