"""SentencePiece subword tokenizer, trained on the corpus and saved inside the model artifact."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import sentencepiece as spm

from app.model.text import normalize

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class Tokenizer:
    """Maps questions to subword ids. Text is normalised with `app.model.text.normalize` first,
    at training and at query time alike, so SentencePiece itself runs with the identity rule."""

    def __init__(self, model_proto: bytes, max_tokens: int):
        self._processor = spm.SentencePieceProcessor(model_proto=model_proto)
        self.model_proto = model_proto
        self.max_tokens = max_tokens

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        *,
        vocab_size: int,
        model_type: Literal["unigram", "bpe"] = "unigram",
        max_tokens: int = 48,
    ) -> Tokenizer:
        normalised = [normalize(t) for t in texts]
        proto = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(normalised),
            model_writer=proto,
            vocab_size=vocab_size,
            model_type=model_type,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            normalization_rule_name="identity",
            character_coverage=1.0,
            # Small corpora cannot fill a large vocabulary; take what the data supports.
            hard_vocab_limit=False,
            num_threads=1,
            minloglevel=2,
        )
        return cls(proto.getvalue(), max_tokens=max_tokens)

    @classmethod
    def load(cls, path: Path, max_tokens: int) -> Tokenizer:
        return cls(Path(path).read_bytes(), max_tokens=max_tokens)

    def save(self, path: Path) -> None:
        Path(path).write_bytes(self.model_proto)

    @property
    def vocab_size(self) -> int:
        return self._processor.get_piece_size()

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        """Subword ids per text, without BOS/EOS, truncated to `max_tokens`.
        Raises EmptyTextError for empty or whitespace-only text."""
        normalised = [normalize(t) for t in texts]
        # SentencePiece's default batch encode starts a thread pool per call (~0.7 ms even for one
        # text); one thread is faster for the batches the service sees, and a lone text skips the batch path.
        if len(normalised) == 1:
            encoded = [self._processor.encode(normalised[0], out_type=int)]
        else:
            encoded = self._processor.encode(normalised, out_type=int, num_threads=1)
        return [ids[: self.max_tokens] for ids in encoded]

    def decode(self, ids: Sequence[int]) -> str:
        return self._processor.decode([i for i in ids if i not in (PAD_ID, BOS_ID, EOS_ID)])

    def pieces(self, text: str) -> list[str]:
        return self._processor.encode(normalize(text), out_type=str)[: self.max_tokens]
