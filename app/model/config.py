"""Architecture, training and sampling settings of a model, as stored in the artifact's config.json.

`qsim train --config FILE` reads a JSON file with any of the sections below; unknown keys are errors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TokenizerConfig(_Strict):
    vocab_size: int = Field(
        8000, ge=32, description="learned pieces, an upper bound (small corpora get fewer); 256 byte pieces come on top"
    )
    model_type: Literal["unigram", "bpe"] = "unigram"
    max_tokens: int = Field(64, ge=4, le=1024, description="longer questions are truncated")


class ArchitectureConfig(_Strict):
    encoder: Literal["bilstm", "lstm", "gru", "bigru", "bow"] = "bilstm"
    latent: Literal["gaussian", "vmf"] = "vmf"
    embedding_dim: int = Field(256, ge=8)
    encoder_hidden: int = Field(128, ge=8)
    encoder_layers: int = Field(1, ge=1, le=4)
    pooling: Literal["last", "mean", "max", "meanmax"] = "mean"
    bag_features: bool = Field(
        True, description="recurrent encoders: the mean subword embedding joins the pooled states"
    )
    feature_size: int = Field(256, ge=8)
    latent_dim: int = Field(128, ge=2)
    kappa: float = Field(100.0, gt=0, description="fixed vMF concentration")
    decoder_hidden: int = Field(256, ge=8)
    decoder_layers: int = Field(1, ge=1, le=4)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)


class TrainingConfig(_Strict):
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(128, ge=2)
    learning_rate: float = Field(1.5e-3, gt=0)
    lr_schedule: Literal["constant", "cosine"] = Field(
        "constant", description="cosine: the learning rate falls from learning_rate along a half cosine to "
        "learning_rate * min_learning_rate_fraction at the end of the run (`epochs` long; --resume with more "
        "epochs goes on along the longer run's cosine, so the rate steps back up to where that run would be)"
    )
    min_learning_rate_fraction: float = Field(0.02, ge=0, le=1, description="cosine: the last step's share of learning_rate")
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    beta: float = Field(1.0, ge=0, description="weight of the KL term once annealing is done")
    kl_schedule: Literal["constant", "linear", "cyclical"] = "linear"
    kl_warmup_epochs: float = Field(2.0, ge=0, description="linear: epochs to ramp beta from 0")
    kl_cycles: int = Field(4, ge=1, description="cyclical: number of ramps over the training run")
    kl_cycle_ratio: float = Field(0.5, gt=0, le=1, description="cyclical: share of each cycle spent ramping")
    free_bits: float = Field(0.05, ge=0, description="nats per latent dimension the KL may keep for free")
    word_dropout: float = Field(0.3, ge=0, lt=1, description="decoder inputs replaced by <unk>")
    val_fraction: float = Field(0.1, gt=0, lt=0.5)
    patience: int = Field(3, ge=1, description="epochs without a better validation loss before stopping")
    collapse_kl: float = Field(0.01, ge=0, description="KL (nats per question) at or below which the latent has collapsed")
    collapse_after_epochs: float = Field(
        1.0, ge=0, description="collapse is checked once beta has been annealed for this many epochs"
    )
    active_unit_threshold: float = Field(0.01, gt=0)
    label_weight: float = Field(
        30.0, ge=0, description="weight of the prototype classification term when the corpus has labels (0: ignore them)"
    )
    label_temperature: float = Field(0.1, gt=0, description="softmax temperature of code-to-prototype distances")
    label_margin: float = Field(
        0.0, ge=0, description="additive margin (index distance) on the own category's prototype distance"
    )
    label_contrast_weight: float = Field(
        0.0, ge=0, description="weight of the in-batch supervised contrastive term: a code against the other "
        "questions' means, same label = positive (temperature: label_temperature; off when label_weight is 0)"
    )
    teacher: Literal["none", "minilm"] = Field(
        "minilm",
        description="sentence-transformer distilled into the latent at training time (needs qsim[teacher]; "
        "without the package training goes on without it and says so)",
    )
    teacher_weight: float = Field(5.0, ge=0, description="weight of the relational (in-batch similarity) term")
    teacher_temperature: float = Field(0.05, gt=0, description="softmax temperature of the teacher's cosines")
    student_temperature: float = Field(0.1, gt=0, description="softmax temperature of the latent distances")
    teacher_regression_weight: float = Field(
        20.0, ge=0, description="weight of the cosine regression of the latent mean, through a learned "
        "projection, onto the teacher's embedding"
    )
    embedding_init: Literal["random", "teacher"] = Field(
        "teacher", description="teacher: subword embeddings start as the teacher's embedding of each piece, "
        "reduced by PCA (the model2vec recipe); needs the teacher"
    )
    augment: float = Field(
        0.5, ge=0, le=1, description="share of training questions whose encoder input is corrupted (word "
        "dropout, a swap or a deleted span) while the targets stay the original question's"
    )
    transfer_pool: int = Field(
        10000, ge=0, description="use at most this many questions of the transfer set (--transfer), a fixed sample "
        "by the seed (0: all of them); the teacher embeds each once, so the pool bounds the training time"
    )
    transfer_per_epoch: int = Field(
        5000, ge=0, description="at most this many transfer-set questions (--transfer) in each epoch, a "
        "fresh sample every epoch"
    )
    pairs_weight: float = Field(1.0, ge=0, description="weight of the known-duplicate pairs term (--pairs)")
    pairs_margin: float = Field(
        0.5, gt=0, description="pairs term: non-duplicates are pushed at least this far apart (index distance)"
    )


class SamplingConfig(_Strict):
    samples: int = Field(5, ge=1, le=64, description="K: latent codes per question")
    temperature: float = Field(0.25, ge=0, description="scale of the posterior noise when sampling codes")
    precision: Literal["float64", "float32"] = Field(
        "float32",
        description="inference arithmetic: float32 runs the batch-invariant path (a question's codes are "
        "bitwise the same in any batch, by construction) and is about twice as fast; float64 runs the "
        "trained modules as they are (models trained before float32 was the default)",
    )


class SearchDefaults(_Strict):
    threshold: float = Field(0.25, ge=0, description="pair distance threshold t used when a request gives none")
    min_pairs: int = Field(1, ge=1, description="pairs within t needed for a match (1 = any of K x K)")
    calibration: dict | None = None


class ModelSettings(_Strict):
    """Everything `qsim train --config` accepts."""

    tokenizer: TokenizerConfig = TokenizerConfig()
    architecture: ArchitectureConfig = ArchitectureConfig()
    training: TrainingConfig = TrainingConfig()
    sampling: SamplingConfig = SamplingConfig()
    search: SearchDefaults = SearchDefaults()

    @model_validator(mode="after")
    def _min_pairs_within_the_pairs(self) -> ModelSettings:
        pairs = self.sampling.samples**2
        if self.search.min_pairs > pairs:
            raise ValueError(
                f"search.min_pairs {self.search.min_pairs} is more than the {pairs} pairs of "
                f"{self.sampling.samples} x {self.sampling.samples} codes (sampling.samples): no question could match"
            )
        return self


class ConfigFileError(ValueError):
    pass


def load_settings_file(path: Path | None) -> ModelSettings:
    if path is None:
        return ModelSettings()
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigFileError(f"config file {path} does not exist") from None
    except json.JSONDecodeError as error:
        raise ConfigFileError(f"config file {path} is not valid JSON: {error}") from None
    try:
        return ModelSettings.model_validate(data)
    except ValidationError as error:
        raise ConfigFileError(f"config file {path}: {validation_problems(error)}") from None


def validation_problems(error: ValidationError) -> str:
    """A settings ValidationError as one line: each problem with the setting it is about."""
    return "; ".join(
        f"{'.'.join(map(str, e['loc']))}: {e['msg']}" if e["loc"] else e["msg"].removeprefix("Value error, ")
        for e in error.errors()
    )
