"""Request and response bodies of the feedback API."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field

from app.questions.schemas import ExternalId, QuestionText, StrictModel

if TYPE_CHECKING:
    from app.api.limits import LimitCheck, Loc

MAX_ID = 2**63 - 1


class FeedbackCreate(StrictModel):
    question: QuestionText
    question_id: int = Field(ge=1, le=MAX_ID, description="qsim's id of the stored question the verdict is about")
    duplicate: bool = Field(description="true: the two mean the same; false: they do not")
    source: ExternalId | None = Field(None, description="who or what gave the verdict (agent, tool); free text")

    def apply_limits(self, check: LimitCheck, loc: Loc = ()) -> None:
        check.question((*loc, "question"), self.question)


class FeedbackOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    question: str
    question_id: int
    stored_text: str = Field(description="the stored question's text when the verdict was given")
    duplicate: bool
    source: str | None
    created_at: datetime


class FeedbackPage(BaseModel):
    items: list[FeedbackOut]
    total: int
    next_after_id: int | None = Field(description="pass as after_id for the next page; null on the last page")
