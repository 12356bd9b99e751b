"""Request and response bodies of the desk page's endpoints."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, Field

from app.questions.schemas import QuestionText, StrictModel, documented_limit

if TYPE_CHECKING:
    from app.api.limits import LimitCheck, Loc

MAX_ID = 2**63 - 1
QuestionId = Annotated[int, Field(ge=1, le=MAX_ID)]


class Rule(BaseModel):
    name: str
    id: str = Field(description="identity of the weights, tokenizer and sampling settings")
    metric: Literal["l2", "cosine"]
    samples: int = Field(description="K: codes sampled per question")
    threshold: float = Field(description="the model's calibrated pair distance threshold t")
    min_pairs: int = Field(description="the model's calibrated pairs within t needed for a match")
    pairs: int = Field(description="K x K: the pairs compared per stored question")


class ExplainRequest(StrictModel):
    question: QuestionText
    ids: list[QuestionId] | None = Field(
        None,
        min_length=1,
        description=f"stored questions to explain, at most {documented_limit('max_limit')} of them; null: the `limit` "
        "nearest by closest pair",
    )
    limit: int = Field(
        25, ge=1, description=f"how many nearest questions when ids is null; at most {documented_limit('max_limit')} "
        "(left out: 25, or that maximum when it is lower)"
    )

    def apply_limits(self, check: LimitCheck, loc: Loc = ()) -> None:
        check.question((*loc, "question"), self.question)
        check.items((*loc, "ids"), self.ids, check.limits.limit)
        check.result_limit(loc, self)


class ExplainedQuestion(BaseModel):
    id: int
    text: str
    external_id: str | None
    answer: str | None
    metadata: dict[str, Any] | None
    distance: float = Field(description="the smallest of the K x K pair distances")
    distances: list[list[float]] = Field(description="[i][j]: distance of query code i to stored code j")
    mean: list[float] = Field(description="posterior mean of the stored question (for the map)")


class ExplainQuery(BaseModel):
    mean: list[float]
    samples: list[list[float]] = Field(description="the K codes a search with this text uses")


class ExplainResponse(BaseModel):
    question: str
    model: Rule
    revision: int = Field(description="index revision the distances were read at")
    limit: int = Field(description="the nearest questions asked for: the request's limit, or when it sent none 25 "
                       "(QSIM_MAX_LIMIT when that is lower)")
    query: ExplainQuery
    results: list[ExplainedQuestion] = Field(description="nearest first (by closest pair)")
    missing: list[int] = Field(description="asked-for ids the index does not hold (deleted?)")


class MapPoint(BaseModel):
    id: int
    x: float
    y: float
    text: str
    label: str | None = Field(description="value of the colour key in the question's metadata")


class MapResponse(BaseModel):
    model: Rule
    revision: int = Field(description="index revision the projection was computed at (cached per revision)")
    method: Literal["pca"]
    total: int = Field(description="questions in the index")
    sampled: int = Field(description="questions projected (a fixed sample when there are more than QSIM_MAP_MAX_POINTS)")
    color_key: str | None
    color_keys: list[str] = Field(description="metadata keys the mapped questions carry, most common first")
    center: list[float] = Field(description="x = (code - center) . components[0], y = ... components[1]")
    components: list[list[float]]
    explained_variance: list[float] = Field(description="share of the variance of the means each axis explains")
    points: list[MapPoint]
