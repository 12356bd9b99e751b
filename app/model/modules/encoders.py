"""Question encoders: token ids -> a fixed-size feature vector that a latent head turns into q(z|x).

Shapes: B = batch, T = padded length, E = embedding size, H = hidden size, F = feature size.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from app.model.tokenizer import PAD_ID


class RecurrentEncoder(nn.Module):
    """Embedding -> (bi)LSTM/GRU -> pooled states (optionally with the mean embedding) -> MLP.

    forward(tokens (B, T) long, lengths (B,) long) -> features (B, F)
    """

    def __init__(
        self,
        vocab_size: int,
        embedding_dim: int,
        hidden_size: int,
        num_layers: int,
        dropout: float,
        cell: str,
        bidirectional: bool,
        pooling: str,
        feature_size: int,
        bag_features: bool = False,
    ):
        super().__init__()
        if cell not in ("lstm", "gru"):
            raise ValueError(f"unknown recurrent cell {cell!r}")
        if pooling not in ("last", "mean", "max", "meanmax"):
            raise ValueError(f"unknown pooling {pooling!r}")
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=PAD_ID)
        rnn_class = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn_class(
            embedding_dim,
            hidden_size,
            num_layers=num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout if num_layers > 1 else 0.0,
        )
        self.cell = cell
        self.pooling = pooling
        directions = 2 if bidirectional else 1
        pooled = hidden_size * directions * (2 if pooling == "meanmax" else 1) + (embedding_dim if bag_features else 0)
        self.bag_features = bag_features
        self.input_dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(nn.Linear(pooled, feature_size), nn.Tanh(), nn.Dropout(dropout))
        self.feature_size = feature_size

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        embedded = self.input_dropout(self.embedding(tokens))  # (B, T, E)
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, state = self.rnn(packed)
        if self.pooling == "last":
            hidden = state[0] if self.cell == "lstm" else state  # (layers*dirs, B, H)
            directions = 2 if self.rnn.bidirectional else 1
            pooled = torch.cat([hidden[-d] for d in range(directions, 0, -1)], dim=-1)  # (B, dirs*H)
        else:
            padded, _ = pad_packed_sequence(outputs, batch_first=True)  # (B, T', dirs*H)
            mask = (torch.arange(padded.size(1), device=tokens.device)[None, :] < lengths[:, None]).unsqueeze(-1)
            pooled_parts = []
            if self.pooling in ("mean", "meanmax"):
                pooled_parts.append((padded * mask).sum(1) / lengths[:, None].clamp(min=1).to(padded.dtype))
            if self.pooling in ("max", "meanmax"):
                pooled_parts.append(padded.masked_fill(~mask, float("-inf")).max(1).values)
            pooled = torch.cat(pooled_parts, dim=-1)
        if self.bag_features:
            # The mean subword embedding beside the recurrent summary: with teacher-initialised
            # embeddings it alone carries much of the meaning (model2vec), and the RNN adds word order.
            mask = (torch.arange(tokens.size(1), device=tokens.device)[None, :] < lengths[:, None]).unsqueeze(-1)
            bag = (embedded * mask).sum(1) / lengths[:, None].clamp(min=1).to(embedded.dtype)
            pooled = torch.cat([pooled, bag], dim=-1)
        return self.mlp(pooled)


class BagOfWordsEncoder(nn.Module):
    """A 2-layer MLP on the bag of subwords: the mean of learned subword vectors is the first
    (linear) layer applied to the normalised bag, followed by a nonlinearity and the second layer.

    forward(tokens (B, T) long, lengths (B,) long) -> features (B, F)
    """

    def __init__(self, vocab_size: int, embedding_dim: int, dropout: float, feature_size: int):
        super().__init__()
        self.bag = nn.EmbeddingBag(vocab_size, embedding_dim, mode="mean", padding_idx=PAD_ID)
        self.mlp = nn.Sequential(nn.Tanh(), nn.Dropout(dropout), nn.Linear(embedding_dim, feature_size), nn.Tanh())
        self.feature_size = feature_size

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.bag(tokens))


ENCODER_CHOICES = ("bilstm", "lstm", "gru", "bigru", "bow")


def build_encoder(
    kind: str,
    *,
    vocab_size: int,
    embedding_dim: int,
    hidden_size: int,
    num_layers: int,
    dropout: float,
    pooling: str,
    feature_size: int,
    bag_features: bool = False,
) -> nn.Module:
    if kind == "bow":
        return BagOfWordsEncoder(vocab_size, embedding_dim, dropout, feature_size)
    if kind not in ENCODER_CHOICES:
        raise ValueError(f"unknown encoder {kind!r}; choose one of {', '.join(ENCODER_CHOICES)}")
    return RecurrentEncoder(
        vocab_size,
        embedding_dim,
        hidden_size,
        num_layers,
        dropout,
        cell="gru" if "gru" in kind else "lstm",
        bidirectional=kind.startswith("bi"),
        pooling=pooling,
        feature_size=feature_size,
        bag_features=bag_features,
    )
