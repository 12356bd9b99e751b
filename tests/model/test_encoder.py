"""The encoding API: means, scales and deterministic samples."""

import numpy as np
import pytest

from app.model.text import EmptyTextError


def test_shapes_and_dtypes(tiny_encoder):
    encoded = tiny_encoder.encode(["where is my card?", "I lost my card"], k=5)
    d = tiny_encoder.latent_dim
    assert encoded.mean.shape == encoded.scale.shape == (2, d)
    assert encoded.samples.shape == (2, 5, d)
    assert encoded.mean.dtype == encoded.samples.dtype == np.float32
    assert tiny_encoder.sample(["a"]).shape == (1, tiny_encoder.samples_per_question, d)


def test_same_text_gives_bitwise_the_same_codes_whatever_the_batch(tiny_encoder, tiny_corpus_rows):
    text = "Has my card been sent yet?"
    alone = tiny_encoder.sample([text])[0]
    others = [r["text"] for r in tiny_corpus_rows[:300]]
    in_a_crowd = tiny_encoder.sample(others[:150] + [text] + others[150:], batch_size=64)[150]
    assert np.array_equal(alone, in_a_crowd)
    assert np.array_equal(alone, tiny_encoder.sample([text])[0])


def test_texts_equal_after_normalisation_share_codes_and_others_do_not(tiny_encoder):
    a, b, c = tiny_encoder.sample(["Where is my card?", "  where IS my   card?", "where is my money?"])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_the_k_samples_of_a_question_differ_and_scatter_around_the_mean(tiny_encoder):
    encoded = tiny_encoder.encode(["my card got declined"], k=64)
    samples = encoded.samples[0]
    assert len({s.tobytes() for s in samples}) == 64
    spread = samples.std(axis=0)
    assert np.allclose(samples.mean(axis=0), encoded.mean[0], atol=4 * spread.max() / 8 + 1e-6)
    assert np.allclose(spread, encoded.scale[0], rtol=0.4)


def test_empty_question_is_rejected(tiny_encoder):
    with pytest.raises(EmptyTextError):
        tiny_encoder.encode(["fine", "   "])


def test_search_defaults_come_from_the_artifact(tiny_encoder):
    assert tiny_encoder.metric == "l2"
    assert tiny_encoder.default_threshold == 0.25
    assert tiny_encoder.default_min_pairs == 1
    assert len(tiny_encoder.model_id) == 16
