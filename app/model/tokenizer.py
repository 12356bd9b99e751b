"""SentencePiece subword tokenizer, trained on the corpus and saved inside the model artifact."""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import sentencepiece as spm

from app.model.text import normalize

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
BYTE_PIECES = 256


class Tokenizer:
    """Maps questions to subword ids. Text is normalised with `app.model.text.normalize` first,
    at training and at query time alike, so SentencePiece itself runs with the identity rule."""

    def __init__(self, model_proto: bytes, max_tokens: int):
        self._processor = spm.SentencePieceProcessor(model_proto=model_proto)
        self.model_proto = model_proto
        self.max_tokens = max_tokens
        self._known: list[int] | None = None

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
            # vocab_size counts the learned pieces; the 256 byte pieces come on top.
            vocab_size=vocab_size + BYTE_PIECES,
            model_type=model_type,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            normalization_rule_name="identity",
            # Rare characters and every script the corpus never showed become UTF-8 byte pieces
            # instead of <unk>, so no text is unreadable and `coverage` can tell how much was known.
            byte_fallback=True,
            character_coverage=0.9995,
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
        return self.truncate(self.pieces_of([normalize(t) for t in texts]))

    def truncate(self, pieces: list[list[int]]) -> list[list[int]]:
        """`pieces_of`'s ids as the encoder reads them: the first `max_tokens` of each text."""
        return [ids[: self.max_tokens] for ids in pieces]

    def pieces_of(self, normalised: Sequence[str]) -> list[list[int]]:
        """Every subword id of each already normalised text (not truncated)."""
        # SentencePiece's default batch encode starts a thread pool per call (~0.7 ms even for one
        # text); one thread is faster for the batches the service sees, and a lone text skips the batch path.
        if len(normalised) == 1:
            return [self._processor.encode(normalised[0], out_type=int)]
        return self._processor.encode(list(normalised), out_type=int, num_threads=1)

    def coverage(self, texts: Sequence[str]) -> list[float]:
        """Per text, the share of its visible characters that fall in pieces the tokenizer learned
        (not <unk>, not byte fallback): 1.0 for text like the training corpus, near 0 for a script
        it never saw. Raises EmptyTextError like `encode`."""
        normalised = [normalize(text) for text in texts]
        return self.coverage_of(normalised, self.pieces_of(normalised))

    def coverage_of(self, normalised: Sequence[str], pieces: Sequence[Sequence[int]]) -> list[float]:
        """`coverage` from the normalised texts and all their subword ids (`pieces_of`)."""
        known_chars = self._known_chars()
        shares = []
        for text, ids in zip(normalised, pieces, strict=True):
            total = len(text) - text.count(" ")  # normalised: whitespace is single spaces
            known = sum(known_chars[i] for i in ids)
            shares.append(min(1.0, known / total) if total else 0.0)
        return shares

    def _known_chars(self) -> list[int]:
        """Per piece id: the characters it stands for (0 for <unk> and byte-fallback pieces)."""
        if self._known is None:
            self._known = [
                0 if i == UNK_ID or self.is_byte(i) else len(self._processor.id_to_piece(i).replace("\u2581", ""))
                for i in range(self.vocab_size)
            ]
        return self._known

    def decode(self, ids: Sequence[int]) -> str:
        return self._processor.decode([i for i in ids if i not in (PAD_ID, BOS_ID, EOS_ID)])

    def piece(self, piece_id: int) -> str:
        return self._processor.id_to_piece(piece_id)

    def is_byte(self, piece_id: int) -> bool:
        """A byte-fallback piece (one UTF-8 byte of a character the tokenizer did not learn)."""
        return self._processor.is_byte(piece_id)

    def pieces(self, text: str) -> list[str]:
        return self._processor.encode(normalize(text), out_type=str)[: self.max_tokens]
