"""Which model serves: the models a reindex may switch to (by name, under QSIM_MODELS_ROOT) and the
active one, recorded in the database as a generation every worker follows."""

from __future__ import annotations

from pathlib import Path

from app.admin.repository import ActiveModel, ServiceStateRepository
from app.core.config import Settings
from app.core.errors import InvalidRequest


class ModelRegistry:
    def __init__(self, settings: Settings, service_state: ServiceStateRepository):
        self.settings = settings
        self.service_state = service_state

    def resolve(self, name: str) -> Path:
        """A model directory by name under the configured models root; names, never paths, come
        from requests."""
        root = Path(self.settings.models_root).resolve()
        candidate = (root / name).resolve()
        if candidate.parent != root or not candidate.is_dir():
            raise InvalidRequest(f"no model named {name!r} under the configured models directory", field="model")
        return candidate

    def active(self) -> ActiveModel:
        """The model chosen by the last reindex that switched models, unless QSIM_MODEL_DIR changed
        since then."""
        return self.service_state.active_model(self.settings.model_dir)
