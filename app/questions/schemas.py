"""Request and response bodies of the questions API.

The limits that are settings (QSIM_MAX_QUESTION_CHARS, QSIM_MAX_LIMIT, ...) are those of the app
that answers, not of the process: each request schema names the fields they bound in
`apply_limits`, and the routes apply them with the app's settings (app/api/limits.py), refusing with
the 422 pydantic would give; the documentation names each setting and its default. Unknown fields
are rejected. Strings must be storable as they are: no NUL characters and no lone surrogates
(PostgreSQL refuses both), which a 422 names instead of a database error.
"""

from __future__ import annotations

import json
import math
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator

from app.core.config import Settings
from app.model.text import normalize

if TYPE_CHECKING:
    from app.api.limits import LimitCheck, Loc

MAX_ANSWER_CHARS = 20_000
MAX_METADATA_BYTES = 16_384
# Nesting deeper than this is refused on the way in: pydantic cannot serialise much deeper values
# (about 250 levels) in a response, so such a row would be stored and then unreadable.
MAX_METADATA_DEPTH = 32


def documented_limit(name: str) -> str:
    """How the documentation names a limit: the variable and its default (the served value may differ)."""
    return f"QSIM_{name.upper()} (default {Settings.model_fields[name].default})"


def _storable(value: str) -> str:
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text (it contains a lone surrogate)") from None
    return value


def _question(value: str) -> str:
    _storable(value)
    normalize(value)  # raises "question is empty or whitespace only"
    return value


QuestionText = Annotated[
    str,
    Field(
        min_length=1,
        description=f"the question as the customer asked it; at most {documented_limit('max_question_chars')} characters",
    ),
    AfterValidator(_question),
]
ExternalId = Annotated[
    str,
    Field(min_length=1, max_length=255, description="the desk's own id of the question (unique)"),
    AfterValidator(_storable),
]
AnswerText = Annotated[str, Field(max_length=MAX_ANSWER_CHARS), AfterValidator(_storable)]


def _storable_json(value: Any, depth: int = 1) -> None:
    """Raises for strings that cannot be stored and for nesting deeper than MAX_METADATA_DEPTH
    (`depth` is the nesting level of `value`: the metadata object itself is level 1)."""
    if isinstance(value, str):
        _storable(value)
    elif isinstance(value, dict | list):
        if depth > MAX_METADATA_DEPTH:
            raise ValueError(f"must not nest objects and arrays more than {MAX_METADATA_DEPTH} levels deep")
        for key, item in value.items() if isinstance(value, dict) else enumerate(value):
            if isinstance(key, str):
                _storable(key)
            _storable_json(item, depth + 1)


def check_metadata(value: dict[str, Any] | None) -> dict[str, Any] | None:
    """The rules every stored metadata document keeps (the API's and `qsim import`'s): ValueError otherwise."""
    if value is None:
        return value
    _storable_json(value)
    try:
        encoded = json.dumps(value, ensure_ascii=False, allow_nan=False)
    except ValueError:
        raise ValueError("must not contain NaN or infinite numbers") from None
    if len(encoded.encode("utf-8")) > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes of JSON")
    return value


Metadata = Annotated[dict[str, Any] | None, AfterValidator(check_metadata)]


def _check_filter(value: dict[str, Any] | None) -> dict[str, Any] | None:
    if value is None:
        return value
    for key, item in value.items():
        _storable(key)
        if isinstance(item, str):
            _storable(item)
        elif isinstance(item, int) or (isinstance(item, float) and math.isfinite(item)):  # bool is an int
            continue
        else:
            kind = {dict: "an object", list: "an array", type(None): "null"}.get(type(item), "a non-finite number")
            raise ValueError(f"filter value of {key!r} must be a string, a number or a boolean, got {kind}")
    return value


MetadataFilter = Annotated[
    dict[str, Any] | None,
    Field(
        description="keep only stored questions whose metadata has each of these top-level keys with an equal "
        "value (strings, numbers, booleans); the answer is the rule evaluated over exactly those questions; "
        f"at most {documented_limit('max_filter_keys')} keys",
        examples=[{"tenant": "acme", "category": "cards"}],
    ),
    AfterValidator(_check_filter),
]


class StrictModel(BaseModel):
    """Requests: unknown fields are errors, and so are values of the wrong JSON type (no silent
    coercion of `false` to 0 or of "10" to 10)."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --------------------------------------------------------------------------- similarity


class SearchOptions(StrictModel):
    limit: int = Field(10, ge=1, description=f"at most this many results; at most {documented_limit('max_limit')}")
    threshold: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="pair distance threshold t; null: the model's calibrated default; values below 1e-9 count as 1e-9 "
        "(identical codes differ by rounding), so 0 finds exact repeats"
    )
    min_pairs: int | None = Field(
        None, ge=1, description="pairs within t needed for a match; null: the model's default (1 = any of K x K)"
    )
    filter: MetadataFilter = None

    def apply_limits(self, check: LimitCheck, loc: Loc = ()) -> None:
        check.result_limit(loc, self)
        check.filter((*loc, "filter"), self.filter)


class SimilarRequest(SearchOptions):
    question: QuestionText

    def apply_limits(self, check: LimitCheck, loc: Loc = ()) -> None:
        super().apply_limits(check, loc)
        check.question((*loc, "question"), self.question)


class SimilarBatchRequest(SearchOptions):
    questions: list[QuestionText] = Field(
        min_length=1, description=f"at most {documented_limit('max_batch_questions')} questions"
    )

    def apply_limits(self, check: LimitCheck, loc: Loc = ()) -> None:
        super().apply_limits(check, loc)
        if check.items((*loc, "questions"), self.questions, check.limits.batch_questions):
            for i, question in enumerate(self.questions):
                check.question((*loc, "questions", i), question)


class ModelInfo(BaseModel):
    name: str
    id: str = Field(description="identity of the weights, tokenizer and sampling settings")
    metric: Literal["l2", "cosine"]
    samples: int = Field(description="K: codes sampled per question")


class SimilarQuestion(BaseModel):
    id: int
    text: str
    external_id: str | None
    distance: float = Field(description="the smallest distance among the K x K pairs of codes")
    pairs_within: int = Field(description="how many of the K x K pairs are within the threshold")
    answer: str | None = Field(description="the stored answer")
    metadata: dict[str, Any] | None = Field(description="the stored metadata")


Reason = Literal["low_coverage"]
COVERAGE = Field(description="share of the question's visible characters the model's tokenizer knows (0 to 1)")
REASON = Field(
    description="null for a normal answer; low_coverage: the model cannot read enough of the question "
    "(coverage below QSIM_MIN_COVERAGE), so only stored questions with the same text are returned"
)
REASON_DETAIL = Field(description="the reason in words, null when there is none")


class SimilarResponse(BaseModel):
    question: str
    threshold: float
    min_pairs: int
    model: ModelInfo
    coverage: float = COVERAGE
    reason: Reason | None = REASON
    reason_detail: str | None = REASON_DETAIL
    results: list[SimilarQuestion]


class SimilarBatchItem(BaseModel):
    question: str
    coverage: float = COVERAGE
    reason: Reason | None = REASON
    reason_detail: str | None = REASON_DETAIL
    results: list[SimilarQuestion]


class SimilarBatchResponse(BaseModel):
    threshold: float
    min_pairs: int
    model: ModelInfo
    results: list[SimilarBatchItem]


class EncodeRequest(StrictModel):
    question: QuestionText

    def apply_limits(self, check: LimitCheck, loc: Loc = ()) -> None:
        check.question((*loc, "question"), self.question)


class EncodeResponse(BaseModel):
    question: str
    model: ModelInfo
    mean: list[float] = Field(description="posterior mean (the direction, for the vMF latent)")
    scale: list[float] = Field(description="posterior standard deviation per dimension (zeros for vMF)")
    samples: list[list[float]] = Field(description="the K codes the index holds for this text")


# --------------------------------------------------------------------------- CRUD


class QuestionCreate(StrictModel):
    text: QuestionText
    external_id: ExternalId | None = None
    answer: AnswerText | None = None
    metadata: Metadata = None

    def apply_limits(self, check: LimitCheck, loc: Loc = ()) -> None:
        check.question((*loc, "text"), self.text)


class QuestionBulkCreate(StrictModel):
    questions: list[QuestionCreate] = Field(
        min_length=1, description=f"at most {documented_limit('max_bulk_questions')} questions"
    )
    on_conflict: Literal["error", "skip", "update"] = Field(
        "error",
        description="when an external_id exists already: fail the whole call (error), keep the stored "
        "question (skip), or overwrite it (update)",
    )

    @field_validator("questions")
    @classmethod
    def _unique_external_ids(cls, questions: list[QuestionCreate]) -> list[QuestionCreate]:
        seen: set[str] = set()
        for question in questions:
            if question.external_id is not None:
                if question.external_id in seen:
                    raise ValueError(f"external_id {question.external_id!r} appears more than once")
                seen.add(question.external_id)
        return questions

    def apply_limits(self, check: LimitCheck, loc: Loc = ()) -> None:
        if check.items((*loc, "questions"), self.questions, check.limits.bulk_questions):
            for i, question in enumerate(self.questions):
                question.apply_limits(check, (*loc, "questions", i))


class QuestionPut(StrictModel):
    """The whole question under an external id: fields left out are stored as null."""

    text: QuestionText
    answer: AnswerText | None = None
    metadata: Metadata = None

    def apply_limits(self, check: LimitCheck, loc: Loc = ()) -> None:
        check.question((*loc, "text"), self.text)


class QuestionUpdate(StrictModel):
    """Only the fields present change; null clears external_id, answer or metadata."""

    text: QuestionText | None = None
    external_id: ExternalId | None = None
    answer: AnswerText | None = None
    metadata: Metadata = None

    @field_validator("text")
    @classmethod
    def _text_not_null(cls, value: str | None) -> str:
        if value is None:
            raise ValueError("text cannot be null")
        return value

    def apply_limits(self, check: LimitCheck, loc: Loc = ()) -> None:
        check.question((*loc, "text"), self.text)


class QuestionOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    text: str
    external_id: str | None
    answer: str | None
    metadata: dict[str, Any] | None = Field(validation_alias="meta")
    created_at: datetime
    updated_at: datetime


class QuestionPage(BaseModel):
    items: list[QuestionOut]
    total: int
    next_after_id: int | None = Field(description="pass as after_id for the next page; null on the last page")


class BulkResult(BaseModel):
    created: int
    updated: int
    skipped: int
    items: list[QuestionOut]
