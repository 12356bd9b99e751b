"""LSTM language-model decoder conditioned on a latent code.

Shapes: B = batch, T = padded length (BOS + tokens), D = latent dimension, V = vocabulary size.
"""

from __future__ import annotations

import torch
from torch import nn

from app.model.tokenizer import PAD_ID


class LSTMDecoder(nn.Module):
    """p(x|z): the initial LSTM state is a projection of z, and z is concatenated to every input
    embedding so the decoder cannot forget it. Trained with teacher forcing.

    forward(inputs (B, T) long, z (B, D)) -> logits (B, T, V)
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int,
        latent_dim: int,
        dropout: float,
    ):
        super().__init__()
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        self.init_state = nn.Linear(latent_dim, 2 * num_layers * hidden_size)
        self.lstm = nn.LSTM(
            embedding_dim + latent_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden_size, vocab_size)

    def forward(self, inputs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        batch, steps = inputs.shape
        embedded = self.dropout(self.embedding(inputs))  # (B, T, E)
        conditioned = torch.cat([embedded, z[:, None, :].expand(batch, steps, z.size(-1))], dim=-1)
        state = torch.tanh(self.init_state(z)).view(batch, 2, self.num_layers, self.hidden_size)
        h0 = state[:, 0].transpose(0, 1).contiguous()  # (layers, B, H)
        c0 = state[:, 1].transpose(0, 1).contiguous()
        outputs, _ = self.lstm(conditioned, (h0, c0))  # (B, T, H)
        return self.output(self.dropout(outputs))
