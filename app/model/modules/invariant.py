"""Batch-invariant float32 inference: a question's posterior and codes bitwise independent of its batch.

float32 sums are rounded as they are grouped, and torch's CPU kernels group them by things other
than the question. Measured here (torch 2.13, MKL 2024.2, AVX-512; bench/README.md):

- GEMM: a row of x @ W comes out one way for M = 1 rows (MKL's GEMV), another for M = 2..3 and a
  third for M >= 4; on two threads a row in a one-row thread block changes again. nn.LSTM on
  packed sequences runs one GEMM per step over the rows still running, so the M of a question's
  last steps (1, 2, 3 ...) depends on its neighbours' lengths; on padded float32 input nn.LSTM
  goes to oneDNN's RNN, and the padding enters the backward direction.
- Element-wise: a kernel vectorises the body of a contiguous tensor and runs the last
  (numel mod 32) elements through scalar code; torch.sigmoid's scalar code rounds differently from
  its vectorised code in ~3% of elements, so a row's result depends on where the tensor ends.
  Tensors of more than 32,768 elements are split between threads, which moves those tails.
- Reductions over a padded time axis group their sums by the padded length.

This path is built so that none of these can see the rest of the batch:

1. One product per question. Every matrix product is a batched product with one item of
   `item_rows` rows per question group ((C, item_rows, K) @ (K, N); item_rows = 1 by default, so
   each question's product is a GEMV of its own row). MKL's batched GEMM computes each item on
   its own: an item's result is the same for 1 or 32 items, on 1 or 2 threads (the tests check
   it), so a question's products are those it gets alone.
2. Tail-free element-wise work. Chunks hold a multiple of `unit` rows (padded with copies of a
   real question), chosen so that every contiguous tensor a transcendental function sees has a
   numel that is a multiple of 32 (no scalar tail); views are walked row by row (the same tail in
   every row); and a chunk has at most as many rows as keep every tensor within torch's
   32,768-element grain (no thread split). Additions, products, quotients, square roots, maxima
   and `where` are exact IEEE operations either way.
3. No input-projection GEMM. The first layer's input projection depends on the token alone, so it
   is a table (vocabulary x gates, computed once in float64, rounded to float32) that is gathered:
   a copy.
4. No padding in a question's own states. Each direction runs over a left-aligned sequence (the
   backward direction over the per-row reversed tokens), so a question's states at its own steps
   come from its own tokens only; steps past its length run on padding and are never read.
5. Sequential pooling. Sums, maxima, the last state and the bag of embeddings are accumulated step
   by step in time order and read at the row's own last step, so their grouping is the question's
   own whatever the chunk's padded length.
6. The vMF temperature (cos(t * arccos w)) depends on the noise alone and is computed with Python's
   scalar libm per element; the rest of sampling is exact operations and per-row reductions over
   the latent dimension, whose grouping depends only on that dimension.

It computes the trained modules' function (the tests compare it with the float64 modules:
within 2e-6 for means, 1e-5 for codes), in float32 arithmetic.

Shapes: C = items, R = rows per item, T = steps, H = hidden, G = gates (4 LSTM, 3 GRU),
dirs = directions, V = vocabulary.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F

from app.model.modules.encoders import BagOfWordsEncoder, RecurrentEncoder
from app.model.modules.latents import GaussianLatent, Posterior, VMFLatent
from app.model.tokenizer import PAD_ID, UNK_ID

GRAIN = 32768  # torch's internal::GRAIN_SIZE: element-wise kernels below it run on one thread
VECTOR = 32  # elements per vectorised loop iteration (2 x 16 floats on AVX-512, 2 x 8 on AVX2)


class InvariantPosterior:
    """q(z|x) and codes in float32 for up to `chunk_rows` questions at a time, each question's
    results bitwise the same whatever the other rows are (see the module docstring).

    Built from a trained SequenceVAE (LSTM or GRU encoders of any depth, direction and pooling, or
    the bag of words; Gaussian or vMF latent); the model is left untouched (its weights are copied).
    item_rows > 1 groups questions into fixed-shape GEMMs of that many rows: faster in bulk, slower
    for one question, and the bits then also rest on MKL treating the rows of a fixed-shape GEMM
    alike (measured: it does, for 4 to 64 rows on 1 and 2 threads)."""

    def __init__(self, model: torch.nn.Module, device: str | torch.device = "cpu", item_rows: int = 1):
        self.device = torch.device(device)
        encoder, latent = model.encoder, model.latent
        f32 = dict(device=self.device, dtype=torch.float32)
        self._latent = latent
        if isinstance(latent, GaussianLatent):
            self._latent_kind = "gaussian"
            self._to_mean = _linear_params(latent.to_mean, f32)
            self._to_logvar = _linear_params(latent.to_logvar, f32)
        elif isinstance(latent, VMFLatent):
            self._latent_kind = "vmf"
            self._to_direction = _linear_params(latent.to_direction, f32)
        else:
            raise ValueError(f"no batch-invariant path for latent {type(latent).__name__}")
        latent_dim = latent.latent_dim
        with torch.no_grad():
            if isinstance(encoder, RecurrentEncoder):
                self._kind = "recurrent"
                self._init_recurrent(encoder, f32)
                gates = 4 if self.cell == "lstm" else 3
                widest = self.dirs * gates * self.hidden
                # row widths of the contiguous tensors that tanh / sigmoid / exp see
                widths = [self.dirs * self.hidden, encoder.feature_size]
                if self.cell == "gru":
                    widths.append(self.dirs * 2 * self.hidden)
            elif isinstance(encoder, BagOfWordsEncoder):
                self._kind = "bow"
                self._bag_table = encoder.bag.weight.detach().to(**f32).clone()
                self._bag_table[PAD_ID] = 0.0
                self._mlp = _linear_params(encoder.mlp[2], f32)
                widest = max(self._bag_table.size(1), encoder.feature_size)
                widths = [self._bag_table.size(1), encoder.feature_size]
            else:
                raise ValueError(f"no batch-invariant path for encoder {type(encoder).__name__}")
        if self._latent_kind == "gaussian":
            widths.append(latent_dim)
        widest = max(widest, encoder.feature_size, latent_dim)
        self.item_rows = item_rows
        # rows come in multiples of `unit`: whole GEMM items, and no tensor of a transcendental
        # function with a numel that is not a multiple of VECTOR
        pad = next(p for p in (1, 2, 4, 8, 16, 32) if all(p * w % VECTOR == 0 for w in widths))
        self.unit = math.lcm(item_rows, pad)
        self.chunk_rows = GRAIN // widest // self.unit * self.unit
        if self.chunk_rows == 0:
            raise ValueError(
                f"no batch-invariant path for this model: {self.unit} rows of {widest} elements are more than "
                f"torch's {GRAIN}-element grain, so threads would split them"
            )
        self._expanded: dict = {}

    # -- set-up ---------------------------------------------------------------------------------

    def _init_recurrent(self, encoder: RecurrentEncoder, f32: dict) -> None:
        rnn = encoder.rnn
        self.cell = encoder.cell
        self.pooling = encoder.pooling
        self.bag_features = encoder.bag_features
        self.hidden = h = rnn.hidden_size
        self.dirs = 2 if rnn.bidirectional else 1
        self.layers = rnn.num_layers
        gates = 4 if self.cell == "lstm" else 3
        # LSTM gates are stored (i, f, g, o); reordered to (i, f, o, g) so that one sigmoid covers
        # the first 3H columns and one tanh the last H.
        perm = torch.arange(gates * h)
        if self.cell == "lstm":
            perm = torch.cat([perm[: 2 * h], perm[3 * h :], perm[2 * h : 3 * h]])
        embedding = encoder.embedding.weight.detach().to(torch.float64)
        self._embedding = encoder.embedding.weight.detach().to(**f32).clone()
        self._vocab = embedding.size(0)
        self._layers = []
        for layer in range(self.layers):
            entry: dict = {"w_hh_t": [], "b_hh": [], "w_ih_t": [], "b_ih": []}
            tables = []
            for d in range(self.dirs):
                suffix = f"_l{layer}" + ("_reverse" if d else "")
                zeros = torch.zeros(gates * h, dtype=torch.float64)
                wi = getattr(rnn, f"weight_ih{suffix}").detach().to(torch.float64)[perm]
                wh = getattr(rnn, f"weight_hh{suffix}").detach().to(torch.float64)[perm]
                bi = getattr(rnn, f"bias_ih{suffix}").detach().to(torch.float64)[perm] if rnn.bias else zeros
                bh = getattr(rnn, f"bias_hh{suffix}").detach().to(torch.float64)[perm] if rnn.bias else zeros
                if self.cell == "lstm":
                    # gates = W_ih x + b_ih + W_hh h + b_hh: both biases go with the input part
                    b_input, b_recurrent = bi + bh, None
                else:
                    # GRU: r and z add both biases; n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
                    b_input = torch.cat([bi[: 2 * h] + bh[: 2 * h], bi[2 * h :]])
                    b_recurrent = torch.cat([zeros[: 2 * h], bh[2 * h :]]).to(**f32)
                entry["w_hh_t"].append(wh.t().to(**f32).contiguous())  # (H, G*H)
                entry["b_hh"].append(b_recurrent)
                if layer == 0:
                    tables.append(embedding @ wi.t() + b_input)  # (V, G*H): every token's projection
                else:
                    entry["w_ih_t"].append(wi.t().to(**f32).contiguous())  # (dirs*H, G*H)
                    entry["b_ih"].append(b_input.to(**f32))
            entry["w_hh_stacked"] = torch.stack(entry["w_hh_t"])  # (dirs, H, G*H): one item per direction
            if layer == 0:
                entry["table"] = torch.cat(tables).to(**f32)  # (dirs*V, G*H), direction-major
            self._layers.append(entry)
        self._mlp = _linear_params(encoder.mlp[0], f32)

    # -- fixed-shape products -------------------------------------------------------------------

    def _matmul(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        """(C*R, K) @ (K, N) [+ bias] as C products of shape (R, K) @ (K, N) -> (C*R, N)."""
        items = x.size(0) // self.item_rows
        x3 = x.reshape(items, self.item_rows, x.size(1))
        w3 = self._expand(weight, items)
        if bias is None:
            out = torch.bmm(x3, w3)
        else:
            out = torch.baddbmm(self._expand(bias, items, self.item_rows), x3, w3)
        return out.reshape(x.size(0), weight.size(1))

    # -- the forward pass -----------------------------------------------------------------------

    def encode_chunk(
        self, ids: Sequence[Sequence[int]], noise: np.ndarray | None = None, temperature: float = 1.0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """-> (mean (n, D), scale (n, D), codes (n, N, D) or None), float32, for n <= chunk_rows
        questions (subword ids); `noise` (n, N, ...) is the latent's draw_noise for them."""
        n = len(ids)
        if not 1 <= n <= self.chunk_rows:
            raise ValueError(f"a chunk holds 1 to {self.chunk_rows} questions, got {n}")
        rows = -(-n // self.unit) * self.unit
        source = list(range(n)) + [n - 1] * (rows - n)  # padding rows: copies of the last real row
        seqs = [list(ids[i]) or [UNK_ID] for i in source]
        features = self._recurrent(seqs) if self._kind == "recurrent" else self._bag_of_words(seqs)
        posterior = self._head(features)
        scale = posterior.scale
        codes = None
        if noise is not None:
            if self._latent_kind == "vmf" and temperature != 1.0:
                noise = temper_vmf_noise(noise, temperature)
                temperature = 1.0
            padded = np.ascontiguousarray(noise[source], dtype=np.float32)
            codes = self._latent.rsample(posterior, padded, temperature)[:n]
        return posterior.mean[:n], scale[:n], codes

    def _recurrent(self, seqs: list[list[int]]) -> torch.Tensor:
        rows, h, dirs, dev = len(seqs), self.hidden, self.dirs, self.device
        items, per_item = rows // self.item_rows, self.item_rows
        lengths = np.array([len(s) for s in seqs])
        steps = int(lengths.max())
        padded = np.full((rows, steps), PAD_ID, dtype=np.int64)
        for r, seq in enumerate(seqs):
            padded[r, : len(seq)] = seq
        # Each direction runs over a left-aligned sequence: at step t the forward direction reads
        # position t, the backward one position len-1-t (steps past the length read padding).
        positions = np.broadcast_to(np.arange(steps), (rows, steps))
        order = [positions]
        if dirs == 2:
            order.append(np.where(positions < lengths[:, None], lengths[:, None] - 1 - positions, positions))
        order = np.stack(order)  # (dirs, rows, T)
        last_step = torch.as_tensor(lengths - 1, device=dev)
        layer_input = None  # (T, rows, dirs*H) in position order, for the layers after the first
        for index, layer in enumerate(self._layers):
            final = index == self.layers - 1
            w_hh = [self._expand(w, items) for w in layer["w_hh_t"]]  # dirs x (items, H, G*H), no copy
            if index == 0:
                token_ids = np.take_along_axis(np.broadcast_to(padded, (dirs, rows, steps)), order, axis=2)
                token_ids = token_ids + (np.arange(dirs) * self._vocab)[:, None, None]
                flat = torch.as_tensor(np.ascontiguousarray(token_ids.transpose(2, 0, 1)), device=dev)  # (T, dirs, rows)
                # (T, dirs, items, R, G*H): a gather, exact; x_t += h W_hh^T below writes into it
                projected = F.embedding(flat, layer["table"]).view(steps, dirs, items, per_item, -1)
            else:
                reads = torch.as_tensor(order, device=dev)  # (dirs, rows, T)
                # what each direction reads at each of its steps: dirs x (T, rows, dirs*H)
                inputs = [
                    layer_input.gather(0, reads[d].t()[:, :, None].expand(steps, rows, layer_input.size(2)))
                    for d in range(dirs)
                ]
            state = torch.zeros(dirs, items, per_item, h, device=dev)
            cell = torch.zeros(dirs, items, per_item, h, device=dev)
            states, totals, peaks = [], [], []
            total = peak = None
            for t in range(steps):
                if index == 0:
                    x_t = projected[t]  # (dirs, items, R, G*H), contiguous
                else:
                    x_t = torch.stack(
                        [self._matmul(inputs[d][t], layer["w_ih_t"][d], layer["b_ih"][d]) for d in range(dirs)]
                    ).view(dirs, items, per_item, -1)
                if self.cell == "lstm":
                    # x_t += h W_hh^T item by item, in place: one batched call over directions x items
                    if items == 1:
                        x_t.view(dirs, per_item, -1).baddbmm_(state.view(dirs, per_item, h), layer["w_hh_stacked"])
                    else:
                        for x_d, state_d, w_d in zip(x_t.unbind(0), state.unbind(0), w_hh, strict=True):
                            x_d.baddbmm_(state_d, w_d)
                    i, f, o = torch.sigmoid(x_t[..., : 3 * h]).unflatten(-1, (3, h)).unbind(-2)
                    cell = torch.addcmul(f * cell, i, torch.tanh(x_t[..., 3 * h :]))
                    state = o * torch.tanh(cell)
                else:
                    state_d = state.unbind(0)
                    recurrent = torch.stack(
                        [
                            torch.baddbmm(self._expand(layer["b_hh"][d], items, per_item), state_d[d], w_hh[d])
                            for d in range(dirs)
                        ]
                    )  # (dirs, items, R, 3H)
                    r, z = torch.sigmoid(x_t[..., : 2 * h] + recurrent[..., : 2 * h]).unflatten(-1, (2, h)).unbind(-2)
                    candidate = torch.tanh(x_t[..., 2 * h :] + r * recurrent[..., 2 * h :])
                    state = (1.0 - z) * candidate + z * state
                if not final or self.pooling == "last":
                    states.append(state)
                if final and self.pooling in ("mean", "meanmax"):
                    total = state if total is None else total + state  # running sum in step order
                    totals.append(total)
                if final and self.pooling in ("max", "meanmax"):
                    peak = state if peak is None else torch.maximum(peak, state)
                    peaks.append(peak)
            if not final:
                stacked = torch.stack(states).view(steps, dirs, rows, h)  # each direction in its own step order
                back = torch.as_tensor(order, device=dev)  # position p was read at step order[d, r, p]
                layer_input = torch.cat(
                    [stacked[:, d].gather(0, back[d].t()[:, :, None].expand(steps, rows, h)) for d in range(dirs)],
                    dim=-1,
                )
        # Each pooled quantity is read at the row's own last step: (T, dirs, rows, H) -> (rows, dirs*H).
        at_last = last_step[None, None, :, None].expand(1, dirs, rows, h)
        divisor = torch.as_tensor(lengths, device=dev, dtype=torch.float32)[:, None]

        def read(history: list[torch.Tensor]) -> torch.Tensor:
            return torch.cat(torch.stack(history).view(steps, dirs, rows, h).gather(0, at_last)[0].unbind(0), dim=-1)

        pooled = []
        if self.pooling == "last":
            pooled.append(read(states))
        if self.pooling in ("mean", "meanmax"):
            pooled.append(read(totals) / divisor)
        if self.pooling in ("max", "meanmax"):
            pooled.append(read(peaks))
        if self.bag_features:
            embedded = F.embedding(torch.as_tensor(np.ascontiguousarray(padded.T), device=dev), self._embedding)
            pooled.append(_running_sum(embedded, last_step) / divisor)
        weight, bias = self._mlp
        return torch.tanh(self._matmul(torch.cat(pooled, dim=-1), weight, bias))

    def _expand(self, tensor: torch.Tensor, items: int, rows: int | None = None) -> torch.Tensor:
        """A weight (K, N) as (items, K, N), or a bias (N,) as (items, rows, N): stride-0 views, cached."""
        key = (id(tensor), items, rows)
        view = self._expanded.get(key)
        if view is None:
            view = tensor.expand(items, *tensor.shape) if rows is None else tensor.expand(items, rows, tensor.size(0))
            self._expanded[key] = view
        return view

    def _bag_of_words(self, seqs: list[list[int]]) -> torch.Tensor:
        rows = len(seqs)
        # EmbeddingBag(mode="mean", padding_idx=PAD) averages over the non-PAD tokens: drop them.
        kept = [[token for token in seq if token != PAD_ID] or [PAD_ID] for seq in seqs]
        counts = np.array([sum(1 for token in seq if token != PAD_ID) for seq in kept])
        steps = max(len(s) for s in kept)
        padded = np.full((steps, rows), PAD_ID, dtype=np.int64)
        for r, seq in enumerate(kept):
            padded[: len(seq), r] = seq
        last = torch.as_tensor([len(s) - 1 for s in kept], device=self.device)
        total = _running_sum(F.embedding(torch.as_tensor(padded, device=self.device), self._bag_table), last)
        bag = total / torch.as_tensor(np.maximum(counts, 1), device=self.device, dtype=torch.float32)[:, None]
        weight, bias = self._mlp
        return torch.tanh(self._matmul(torch.tanh(bag), weight, bias))

    def _head(self, features: torch.Tensor) -> Posterior:
        if self._latent_kind == "gaussian":
            mean = self._matmul(features, *self._to_mean)
            logvar = self._matmul(features, *self._to_logvar).clamp(min=-12.0, max=8.0)
            return Posterior(mean, logvar)
        return Posterior(F.normalize(self._matmul(features, *self._to_direction), dim=-1, eps=1e-6), None)


def _running_sum(values: torch.Tensor, last: torch.Tensor) -> torch.Tensor:
    """values (T, rows, E) -> (rows, E): each row's values summed in step order up to its step `last`."""
    total, totals = None, []
    for t in range(values.size(0)):
        total = values[0] if total is None else total + values[t]
        totals.append(total)
    return torch.stack(totals).gather(0, last[None, :, None].expand(1, values.size(1), values.size(2)))[0]


def temper_vmf_noise(noise: np.ndarray, temperature: float) -> np.ndarray:
    """The vMF noise with each cosine w replaced by cos(temperature * arccos(w)), what
    VMFLatent.rsample does for temperature != 1, computed element by element with Python's libm."""
    out = np.array(noise, dtype=np.float32, copy=True)
    w = out[..., 0].reshape(-1)
    tempered = [math.cos(temperature * math.acos(min(1.0, max(-1.0, float(x))))) for x in w]
    out[..., 0] = np.asarray(tempered, dtype=np.float32).reshape(out.shape[:-1])
    return out


def _linear_params(linear: torch.nn.Linear, f32: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(W^T (in, out), bias (out,)) as float32 copies."""
    weight = linear.weight.detach().to(**f32).t().contiguous()
    bias = linear.bias.detach().to(**f32).clone() if linear.bias is not None else torch.zeros(weight.size(1), **f32)
    return weight, bias
