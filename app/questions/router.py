"""HTTP routes of the questions API: translate requests to QuestionService calls and back."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response, status
from fastapi.exceptions import RequestValidationError

from app.api.deps import QuestionsDep
from app.api.errors import error_responses
from app.api.limits import limited
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
    QuestionPut,
    QuestionUpdate,
    SimilarBatchItem,
    SimilarBatchRequest,
    SimilarBatchResponse,
    SimilarQuestion,
    SimilarRequest,
    SimilarResponse,
)
from app.similarity.search_service import Hit, ModelSummary, SearchQuery

router = APIRouter(
    prefix="/questions", tags=["questions"], route_class=Utf8BodyRoute, responses=error_responses(413, 422, 503)
)

# Bodies held to the limits of the app's settings (QSIM_MAX_QUESTION_CHARS, ...) once validated.
SimilarBody = limited(SimilarRequest)
SimilarBatchBody = limited(SimilarBatchRequest)
EncodeBody = limited(EncodeRequest)
CreateBody = limited(QuestionCreate)
BulkBody = limited(QuestionBulkCreate)
PutBody = limited(QuestionPut)
UpdateBody = limited(QuestionUpdate)

MAX_ID = 2**63 - 1
QuestionId = Annotated[int, Path(ge=1, le=MAX_ID, description="qsim's id of the question")]
ExternalIdPath = Annotated[
    str, Path(min_length=1, max_length=255, description="the desk's own id of the question (may contain /)")
]


def _checked_external_id(value: str) -> str:
    if "\x00" in value:
        raise RequestValidationError(
            [{"loc": ("path", "external_id"), "msg": "must not contain NUL characters", "type": "value_error"}]
        )
    return value


def _model(summary: ModelSummary) -> ModelInfo:
    return ModelInfo(name=summary.name, id=summary.id, metric=summary.metric, samples=summary.samples)


def _results(hits: list[Hit]) -> list[SimilarQuestion]:
    return [
        SimilarQuestion(
            id=h.id, text=h.text, external_id=h.external_id, distance=h.distance, pairs_within=h.pairs_within,
            answer=h.answer, metadata=h.meta,
        )
        for h in hits
    ]


def _query(text: str, body: SimilarRequest | SimilarBatchRequest) -> SearchQuery:
    return SearchQuery(text, body.limit, body.threshold, body.min_pairs, SearchQuery.where(body.filter or None))


def _new(item: QuestionCreate) -> NewQuestion:
    return NewQuestion(text=item.text, external_id=item.external_id, answer=item.answer, meta=item.metadata)


@router.post("/similar", response_model=SimilarResponse, summary="Questions that mean the same")
async def similar(body: SimilarBody, questions: QuestionsDep) -> SimilarResponse:
    """Stored questions with at least `min_pairs` of the K x K pairs of latent codes within
    `threshold`, closest first; with `filter`, among the questions whose metadata matches it."""
    answer = await questions.similar_async(_query(body.question, body))
    return SimilarResponse(
        question=body.question,
        threshold=answer.threshold,
        min_pairs=answer.min_pairs,
        model=_model(answer.model),
        coverage=answer.coverage,
        reason=answer.reason,
        reason_detail=answer.reason_detail,
        results=_results(answer.hits),
    )


@router.post("/similar/batch", response_model=SimilarBatchResponse, summary="Similar questions for many")
async def similar_batch(body: SimilarBatchBody, questions: QuestionsDep) -> SimilarBatchResponse:
    answers = await questions.similar_many_async([_query(text, body) for text in body.questions])
    return SimilarBatchResponse(
        threshold=answers[0].threshold,
        min_pairs=answers[0].min_pairs,
        model=_model(answers[0].model),
        results=[
            SimilarBatchItem(
                question=q, coverage=a.coverage, reason=a.reason, reason_detail=a.reason_detail, results=_results(a.hits)
            )
            for q, a in zip(body.questions, answers, strict=True)
        ],
    )


@router.post("/encode", response_model=EncodeResponse, summary="The latent codes of a question")
async def encode(body: EncodeBody, questions: QuestionsDep) -> EncodeResponse:
    """Exactly the codes the index holds for this text (sampling is deterministic per question)."""
    model, encoded = await questions.encode_async(body.question)
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
def create(body: CreateBody, questions: QuestionsDep, response: Response) -> QuestionOut:
    """Stores and indexes one question; it is searchable when this call returns."""
    question = questions.create(_new(body))
    response.headers["Location"] = f"/questions/{question.id}"
    return QuestionOut.model_validate(question)


@router.post(
    "/bulk", response_model=BulkResult, status_code=status.HTTP_201_CREATED, summary="Store many questions",
    responses=error_responses(409),
)
def create_bulk(body: BulkBody, questions: QuestionsDep) -> BulkResult:
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
    items, total = questions.page(after_id, limit + 1)  # one more: whether a next page exists
    more, items = len(items) > limit, items[:limit]
    return QuestionPage(
        items=[QuestionOut.model_validate(q) for q in items],
        total=total,
        next_after_id=items[-1].id if more else None,
    )


@router.get(
    "/by-external-id/{external_id:text}", response_model=QuestionOut, summary="The question with this external id",
    responses=error_responses(404),
)
def get_by_external_id(external_id: ExternalIdPath, questions: QuestionsDep) -> QuestionOut:
    return QuestionOut.model_validate(questions.get_by_external_id(_checked_external_id(external_id)))


@router.put(
    "/by-external-id/{external_id:text}", response_model=QuestionOut, summary="Create or replace by external id",
    responses={201: {"description": "created", "model": QuestionOut}, **error_responses(422)},
)
def put_by_external_id(
    external_id: ExternalIdPath, body: PutBody, questions: QuestionsDep, response: Response
) -> QuestionOut:
    """Idempotent upsert: 201 when the question is new, 200 when it was updated or already equal.
    Replaying the same body returns the same id, creates nothing and logs no change. Fields left
    out are stored as null (the body is the whole question)."""
    outcome = questions.put_by_external_id(
        NewQuestion(text=body.text, external_id=_checked_external_id(external_id), answer=body.answer, meta=body.metadata)
    )
    response.status_code = status.HTTP_201_CREATED if outcome.created else status.HTTP_200_OK
    response.headers["Location"] = f"/questions/{outcome.question.id}"
    return QuestionOut.model_validate(outcome.question)


@router.get("/{question_id:int}", response_model=QuestionOut, summary="One stored question", responses=error_responses(404))
def get_question(question_id: QuestionId, questions: QuestionsDep) -> QuestionOut:
    return QuestionOut.model_validate(questions.get(question_id))


@router.patch(
    "/{question_id:int}", response_model=QuestionOut, summary="Change a stored question", responses=error_responses(404, 409)
)
def update_question(question_id: QuestionId, body: UpdateBody, questions: QuestionsDep) -> QuestionOut:
    """Only the fields sent change; a new text is re-encoded before this call returns."""
    fields = body.model_dump(exclude_unset=True)
    if "metadata" in fields:
        fields["meta"] = fields.pop("metadata")
    return QuestionOut.model_validate(questions.update(question_id, fields))


@router.delete(
    "/{question_id:int}", status_code=status.HTTP_204_NO_CONTENT, summary="Delete a stored question",
    responses=error_responses(404),
)
def delete_question(question_id: QuestionId, questions: QuestionsDep) -> Response:
    questions.delete(question_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
