"""Request and response bodies of the cluster API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from app.questions.schemas import MetadataFilter, StrictModel

if TYPE_CHECKING:
    from app.api.limits import LimitCheck, Loc


class ClusterRequest(StrictModel):
    threshold: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="pair distance threshold t; null: the model's calibrated default"
    )
    min_pairs: int | None = Field(None, ge=1, description="pairs within t for two questions to be joined; null: the model's default")
    filter: MetadataFilter = None

    def apply_limits(self, check: LimitCheck, loc: Loc = ()) -> None:
        check.filter((*loc, "filter"), self.filter)


class ClusterAccepted(BaseModel):
    job_id: str
    status: str


class ClusterQuestion(BaseModel):
    id: int
    text: str | None


class ClusterOut(BaseModel):
    size: int
    representative: ClusterQuestion
    members: list[ClusterQuestion] = Field(description="the representative first, then by distance to it")


class ClusterResultOut(BaseModel):
    threshold: float
    min_pairs: int
    model: str
    model_id: str
    questions: int = Field(description="questions clustered (those passing the filter)")
    clusters: list[ClusterOut] = Field(description="clusters of two or more questions, largest first")
    singletons: int = Field(description="questions that match no other")
