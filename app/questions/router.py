"""HTTP routes of the questions API: translate requests to QuestionService calls and back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status

from app.api.deps import QuestionsDep
from app.api.errors import error_responses
from app.api.routing import Utf8BodyRoute
from app.questions.repository import NewQuestion
from app.questions.schemas import (
    BulkResult,
    EncodeRequest,
    EncodeResponse,
    ModelInfo,
    QuestionBulkCreate,
    QuestionCreate,
    QuestionOut,
    QuestionPage,
    QuestionUpdate,
    SimilarBatchItem,
    SimilarBatchRequest,
    SimilarBatchResponse,
    SimilarQuestion,
    SimilarRequest,
    SimilarResponse,
)
from app.similarity.engine import Hit, ModelSummary, SearchQuery

router = APIRouter(
    prefix="/questions", tags=["questions"], route_class=Utf8BodyRoute, responses=error_responses(413, 422, 503)
)

MAX_ID = 2**63 - 1
QuestionId = Annotated[int, Path(ge=1, le=MAX_ID, description="qsim's id of the question")]


def _model(summary: ModelSummary) -> ModelInfo:
    return ModelInfo(name=summary.name, id=summary.id, metric=summary.metric, samples=summary.samples)


def _results(hits: list[Hit]) -> list[SimilarQuestion]:
    return [
        SimilarQuestion(id=h.id, text=h.text, external_id=h.external_id, distance=h.distance, pairs_within=h.pairs_within)
        for h in hits
    ]


def _new(item: QuestionCreate) -> NewQuestion:
    return NewQuestion(text=item.text, external_id=item.external_id, answer=item.answer, meta=item.metadata)


@router.post("/similar", response_model=SimilarResponse, summary="Questions that mean the same")
async def similar(body: SimilarRequest, questions: QuestionsDep) -> SimilarResponse:
    """Stored questions with at least `min_pairs` of the K x K pairs of latent codes within
    `threshold`, closest first."""
    answer = await questions.similar_async(SearchQuery(body.question, body.limit, body.threshold, body.min_pairs))
    return SimilarResponse(
        question=body.question,
        threshold=answer.threshold,
        min_pairs=answer.min_pairs,
        model=_model(answer.model),
        results=_results(answer.hits),
    )


@router.post("/similar/batch", response_model=SimilarBatchResponse, summary="Similar questions for many")
def similar_batch(body: SimilarBatchRequest, questions: QuestionsDep) -> SimilarBatchResponse:
    answers = questions.similar_many(
        [SearchQuery(text, body.limit, body.threshold, body.min_pairs) for text in body.questions]
    )
    return SimilarBatchResponse(
        threshold=answers[0].threshold,
        min_pairs=answers[0].min_pairs,
        model=_model(answers[0].model),
        results=[SimilarBatchItem(question=q, results=_results(a.hits)) for q, a in zip(body.questions, answers, strict=True)],
    )


@router.post("/encode", response_model=EncodeResponse, summary="The latent codes of a question")
def encode(body: EncodeRequest, questions: QuestionsDep) -> EncodeResponse:
    """Exactly the codes the index holds for this text (sampling is deterministic per question)."""
    model, encoded = questions.encode(body.question)
    return EncodeResponse(
        question=body.question,
        model=_model(model),
        mean=encoded.mean[0].tolist(),
        scale=encoded.scale[0].tolist(),
        samples=encoded.samples[0].tolist(),
    )


@router.post(
    "", response_model=QuestionOut, status_code=status.HTTP_201_CREATED, summary="Store a question",
    responses=error_responses(409),
)
def create(body: QuestionCreate, questions: QuestionsDep, response: Response) -> QuestionOut:
    """Stores and indexes one question; it is searchable when this call returns."""
    question = questions.create(_new(body))
    response.headers["Location"] = f"/questions/{question.id}"
    return QuestionOut.model_validate(question)


@router.post(
    "/bulk", response_model=BulkResult, status_code=status.HTTP_201_CREATED, summary="Store many questions",
    responses=error_responses(409),
)
def create_bulk(body: QuestionBulkCreate, questions: QuestionsDep) -> BulkResult:
    """All or nothing, in one transaction; `on_conflict` says what an existing external_id does."""
    outcome = questions.create_many([_new(item) for item in body.questions], body.on_conflict)
    return BulkResult(
        created=outcome.created,
        updated=outcome.updated,
        skipped=outcome.skipped,
        items=[QuestionOut.model_validate(q) for q in outcome.questions],
    )


@router.get("", response_model=QuestionPage, summary="List stored questions")
def list_questions(
    questions: QuestionsDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    after_id: Annotated[int, Query(ge=0, le=MAX_ID, description="return questions with a larger id")] = 0,
) -> QuestionPage:
    items, total = questions.page(after_id, limit)
    return QuestionPage(
        items=[QuestionOut.model_validate(q) for q in items],
        total=total,
        next_after_id=items[-1].id if len(items) == limit else None,
    )


@router.get("/{question_id}", response_model=QuestionOut, summary="One stored question", responses=error_responses(404))
def get_question(question_id: QuestionId, questions: QuestionsDep) -> QuestionOut:
    return QuestionOut.model_validate(questions.get(question_id))


@router.patch(
    "/{question_id}", response_model=QuestionOut, summary="Change a stored question", responses=error_responses(404, 409)
)
def update_question(question_id: QuestionId, body: QuestionUpdate, questions: QuestionsDep) -> QuestionOut:
    """Only the fields sent change; a new text is re-encoded before this call returns."""
    fields = body.model_dump(exclude_unset=True)
    if "metadata" in fields:
        fields["meta"] = fields.pop("metadata")
    return QuestionOut.model_validate(questions.update(question_id, fields))


@router.delete(
    "/{question_id}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a stored question",
    responses=error_responses(404),
)
def delete_question(question_id: QuestionId, questions: QuestionsDep) -> Response:
    questions.delete(question_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
