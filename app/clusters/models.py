"""Results of cluster jobs, kept in the database so any worker can answer GET /admin/clusters/{job_id}."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from app.core.db import Base, UTCDateTime
from app.questions.models import utcnow


class ClusterResult(Base):
    __tablename__ = "cluster_results"

    job_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    result: Mapped[dict] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
