"""The float32 path (`sampling.precision: "float32"`, the default; app/model/modules/invariant.py): a question's
mean, scale and codes are bitwise the same whatever batch it is encoded in (alone, with 1 or 255
others, at any position, beside neighbours of any length, in any chunking, on 1 or 2 threads), and
they are the function the trained float64 modules compute, to float32 accuracy."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.model.artifact import CONFIG_FILE, compute_model_id, load_artifact
from app.model.config import ArchitectureConfig, ModelSettings
from app.model.encoder import QuestionEncoder
from app.model.modules.invariant import InvariantPosterior, temper_vmf_noise
from app.model.tokenizer import UNK_ID
from app.model.vae import Batch, SequenceVAE

LONG = os.environ.get("QSIM_LONG_TESTS") == "1"
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_MODEL = ROOT / "models" / "default"
SWEEP = settings(max_examples=300 if LONG else 40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class threads:
    """torch's intra-op thread count for a block, restored after."""

    def __init__(self, count: int):
        self.count = count

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.count)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def precision_copy(model_dir: Path, target: Path, precision: str) -> Path:
    """A copy of an artifact whose config asks for `precision` (so another model id)."""
    shutil.copytree(model_dir, target)
    config = json.loads((target / CONFIG_FILE).read_text())
    config["settings"]["sampling"]["precision"] = precision
    config["model_id"] = compute_model_id(config["files"], ModelSettings.model_validate(config["settings"]))
    (target / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    return target


def question_pool(rows: list[dict], max_tokens: int) -> list[str]:
    """Questions of every length the service sees: one-piece texts, texts past max_tokens
    (truncated), another script, digits, duplicates, then the corpus."""
    texts = [r["text"] for r in rows]
    long = " ".join(texts[:8])
    special = ["a", "?", "card", "我的银行卡还没有寄到", "1234 5678 9012", long, long + " and more"]
    return special + [" ".join(["card"] * max_tokens), texts[0], texts[0].upper()] + texts


def assert_rows_match(encoded, alone: dict[str, tuple], texts: list[str]) -> None:
    for row, text in enumerate(texts):
        mean, scale, samples = alone[text]
        assert encoded.mean[row].tobytes() == mean, (row, text)
        assert encoded.scale[row].tobytes() == scale, (row, text)
        assert encoded.samples[row].tobytes() == samples, (row, text)


def alone_results(encoder: QuestionEncoder, texts: list[str], k: int) -> dict[str, tuple]:
    out = {}
    for text in dict.fromkeys(texts):
        encoded = encoder.encode([text], k=k)
        out[text] = (encoded.mean[0].tobytes(), encoded.scale[0].tobytes(), encoded.samples[0].tobytes())
    return out


# -- the tiny test model, through QuestionEncoder ----------------------------------------------


@pytest.fixture(scope="module")
def tiny_float32(tiny_encoder) -> QuestionEncoder:
    """The tiny model as trained: float32 is the trainer's default."""
    assert tiny_encoder.artifact.settings.sampling.precision == "float32"
    return tiny_encoder


@pytest.fixture(scope="module")
def tiny_float64(tiny_model_dir, tmp_path_factory) -> QuestionEncoder:
    return QuestionEncoder.load(precision_copy(tiny_model_dir, tmp_path_factory.mktemp("float64") / "tiny-float64", "float64"))


@pytest.fixture(scope="module")
def tiny_pool(tiny_corpus_rows, tiny_float32) -> list[str]:
    return question_pool(tiny_corpus_rows, tiny_float32.max_tokens)


TWO_THREAD_POOL = 60  # the two-thread sweep draws from the pool's first questions (its references cost more)


@pytest.fixture(scope="module")
def tiny_alone(tiny_float32, tiny_pool) -> dict[int, dict[str, tuple]]:
    """Each pool question encoded alone, per thread count."""
    k = tiny_float32.samples_per_question
    with threads(1):
        one = alone_results(tiny_float32, tiny_pool, k)
    with threads(2):
        two = alone_results(tiny_float32, tiny_pool[:TWO_THREAD_POOL], k)
    return {1: one, 2: two}


def test_float32_is_its_own_model_and_runs_the_invariant_path(tiny_float32, tiny_float64):
    assert tiny_float32.model_id != tiny_float64.model_id  # the precision is part of the identity
    assert tiny_float32._invariant is not None and tiny_float64._invariant is None
    encoded = tiny_float32.encode(["where is my card?", "I lost my card"], k=5)
    assert encoded.mean.dtype == encoded.scale.dtype == encoded.samples.dtype == np.float32
    assert encoded.samples.shape == (2, 5, tiny_float32.latent_dim)


def sweep_batches(encoder: QuestionEncoder, pool: list[str], alone: dict[str, tuple], data, sizes: list[int]) -> None:
    size = data.draw(st.sampled_from(sizes), label="batch of")
    picks = data.draw(st.lists(st.integers(0, len(pool) - 1), min_size=size, max_size=size), label="questions")
    batch_size = data.draw(st.sampled_from([1, 2, 7, 32, 256]), label="batch_size")
    texts = [pool[i] for i in picks]
    encoded = encoder.encode(texts, k=encoder.samples_per_question, batch_size=batch_size)
    assert_rows_match(encoded, alone, texts)


@SWEEP
@given(data=st.data())
def test_codes_are_bitwise_those_of_the_question_alone_in_any_batch(tiny_float32, tiny_pool, tiny_alone, data):
    with threads(1):
        sweep_batches(tiny_float32, tiny_pool, tiny_alone[1], data, [1, 2, 3, 31, 32, 33, 64, 100, 256])


@settings(SWEEP, max_examples=60 if LONG else 8)
@given(data=st.data())
def test_on_two_threads_too(tiny_float32, tiny_pool, tiny_alone, data):
    """Thread count is a process setting: on two threads a question gets in any batch the bits it
    gets alone on two threads."""
    with threads(2):
        sweep_batches(tiny_float32, tiny_pool[:TWO_THREAD_POOL], tiny_alone[2], data, [1, 2, 33, 64])


def test_a_question_among_255_others_of_every_length_in_every_position(tiny_float32, tiny_pool, tiny_alone):
    rng = np.random.default_rng(5)
    texts = [tiny_pool[i] for i in rng.choice(len(tiny_pool), 256, replace=False)]
    with threads(1):
        for shift in range(0, 256, 37):
            rolled = texts[shift:] + texts[:shift]
            assert_rows_match(tiny_float32.encode(rolled, k=tiny_float32.samples_per_question), tiny_alone[1], rolled)


@pytest.mark.parametrize("k", [1, 64])
def test_any_number_of_codes(tiny_float32, tiny_pool, k):
    texts = tiny_pool[:40]
    with threads(1):
        alone = alone_results(tiny_float32, texts, k)
        encoded = tiny_float32.encode(texts[::-1] + texts, k=k)
    for row, text in enumerate(texts[::-1] + texts):
        mean, scale, samples = alone[text]
        assert encoded.mean[row].tobytes() == mean and encoded.samples[row].tobytes() == samples, (k, row)


def test_float32_codes_are_the_float64_codes_to_float32_accuracy(tiny_model_dir, tiny_float32, tiny_pool):
    artifact = load_artifact(tiny_model_dir)
    artifact.settings.sampling.precision = "float64"  # same model id, so the same noise
    float64 = QuestionEncoder(artifact)
    texts = tiny_pool[:120]
    a, b = tiny_float32.encode(texts, k=5), float64.encode(texts, k=5)
    assert np.allclose(a.mean, b.mean, atol=2e-6, rtol=0)
    assert np.allclose(a.scale, b.scale, atol=2e-6, rtol=1e-5)
    assert np.allclose(a.samples, b.samples, atol=1e-5, rtol=0)


def test_reindexing_reproduces_the_index_and_a_stored_question_is_its_own_match(tiny_float32, tiny_pool):
    stored = tiny_float32.sample(tiny_pool, batch_size=64)
    again = tiny_float32.sample(list(reversed(tiny_pool)), batch_size=5)[::-1]
    assert stored.tobytes() == again.tobytes()
    query = tiny_float32.sample([tiny_pool[17]])[0]
    assert np.abs(stored[17] - query).max() == 0.0


# -- every architecture, straight through InvariantPosterior -----------------------------------

ARCHITECTURES = [
    dict(encoder="bilstm", latent="vmf", pooling="mean", bag_features=True),
    dict(encoder="bilstm", latent="gaussian", pooling="meanmax", encoder_layers=2),
    dict(encoder="lstm", latent="gaussian", pooling="last", bag_features=True),
    dict(encoder="bigru", latent="vmf", pooling="max"),
    dict(encoder="gru", latent="gaussian", pooling="mean", encoder_layers=2, bag_features=True),
    dict(encoder="bilstm", latent="vmf", pooling="last", encoder_hidden=24, feature_size=40, latent_dim=12),
    dict(encoder="bow", latent="gaussian"),
    dict(encoder="bow", latent="vmf", embedding_dim=20, latent_dim=6),
]
VOCAB = 120


def random_model(arch: dict, seed: int) -> SequenceVAE:
    config = ArchitectureConfig.model_validate(
        dict(embedding_dim=32, encoder_hidden=32, feature_size=32, latent_dim=16, decoder_hidden=16, bag_features=False)
        | arch
    )
    torch.manual_seed(seed)
    model = SequenceVAE(VOCAB, config).eval()
    with torch.no_grad():  # biases and the padding row away from zero, as after training
        for name, parameter in model.named_parameters():
            if "bias" in name:
                parameter.normal_(0.0, 0.3)
    return model


def random_questions(rng: np.random.Generator, n: int, longest: int = 40) -> list[list[int]]:
    lengths = rng.choice([1, 1, 2, 3, 5, 8, 13, 21, longest], size=n)
    return [[int(t) for t in rng.integers(UNK_ID, VOCAB, size=length)] for length in lengths]


CASES = [(arch, 1) for arch in ARCHITECTURES] + [(ARCHITECTURES[0], 4), (ARCHITECTURES[1], 4)]


@pytest.mark.parametrize(
    ("arch", "item_rows"), CASES, ids=lambda a: "-".join(str(v) for v in a.values()) if isinstance(a, dict) else f"items-of-{a}"
)
def test_every_architecture_is_batch_invariant_and_computes_the_trained_function(arch, item_rows):
    model = random_model(arch, seed=len(str(arch)))
    invariant = InvariantPosterior(model, item_rows=item_rows)
    reference = model.double()
    rng = np.random.default_rng(11)
    pool = random_questions(rng, 40)
    noise = model.latent.draw_noise(rng, len(pool), 3)
    temperature = 0.5
    with torch.inference_mode():
        for count in (2, 1):
            with threads(count):
                alone = [
                    [part[0] for part in invariant.encode_chunk([q], noise[i : i + 1], temperature)]
                    for i, q in enumerate(pool)
                ]
                for trial in range((8 if count == 1 else 3) * (5 if LONG else 1)):
                    size = int(rng.integers(1, invariant.chunk_rows + 1))
                    picks = rng.integers(0, len(pool), size=size)
                    mean, scale, codes = invariant.encode_chunk([pool[i] for i in picks], noise[picks], temperature)
                    for row, i in enumerate(picks):
                        assert torch.equal(mean[row], alone[i][0]), (count, trial, row)
                        assert torch.equal(scale[row], alone[i][1]), (count, trial, row)
                        assert torch.equal(codes[row], alone[i][2]), (count, trial, row)
        # the same function as the trained modules (float64, packed nn.LSTM, the latent's rsample)
        posterior = reference.posterior(Batch.from_ids(pool))
        expected = reference.latent.rsample(posterior, noise.astype(np.float64), temperature)
        mean = torch.stack([a[0] for a in alone]).double()
        codes = torch.stack([a[2] for a in alone]).double()
        assert torch.allclose(mean, posterior.mean, atol=2e-6, rtol=0)
        assert torch.allclose(torch.stack([a[1] for a in alone]).double(), posterior.scale, atol=2e-6, rtol=1e-5)
        assert torch.allclose(codes, expected, atol=1e-5, rtol=0)


def test_tempered_vmf_noise_is_what_rsample_computes():
    rng = np.random.default_rng(0)
    model = random_model(dict(encoder="bilstm", latent="vmf"), seed=1).double()
    noise = model.latent.draw_noise(rng, 4, 6)
    posterior = model.posterior(Batch.from_ids(random_questions(rng, 4)))
    expected = model.latent.rsample(posterior, noise.astype(np.float64), 0.25)
    tempered = model.latent.rsample(posterior, temper_vmf_noise(noise, 0.25).astype(np.float64), 1.0)
    assert torch.allclose(expected, tempered, atol=1e-6)


# -- the shipped model ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_float32():
    artifact = load_artifact(DEFAULT_MODEL)
    if artifact.settings.sampling.precision != "float32":
        artifact.settings.sampling.precision = "float32"  # same weights; the id here stays the shipped one
    return QuestionEncoder(artifact)


def test_the_shipped_model_in_float32_is_batch_invariant(default_float32):
    """Kept short (a few seconds); QSIM_LONG_TESTS=1 sweeps more compositions."""
    import csv

    with (ROOT / "data" / "banking77" / "test.csv").open(newline="") as handle:
        texts = [row["text"] for row in csv.DictReader(handle)][: 2000 if LONG else 300]
    pool = question_pool([{"text": t} for t in texts], default_float32.max_tokens)
    k = default_float32.samples_per_question
    rng = np.random.default_rng(13)
    with threads(1):
        alone = alone_results(default_float32, pool, k)
        for size in [1, 2, 31, 33, 256] + ([int(s) for s in rng.integers(1, 400, size=20)] if LONG else []):
            picks = rng.integers(0, len(pool), size=size)
            batch = [pool[i] for i in picks]
            assert_rows_match(default_float32.encode(batch, k=k, batch_size=int(rng.choice([7, 32, 256]))), alone, batch)
