"""The request limits of the app that answers: QSIM_MAX_QUESTION_CHARS, QSIM_MAX_LIMIT,
QSIM_MAX_BATCH_QUESTIONS, QSIM_MAX_BULK_QUESTIONS and QSIM_MAX_FILTER_KEYS, taken from the settings
the app was created with (`request.app.state.settings`), never from the process environment, so
`create_app(Settings(max_question_chars=20))` refuses 21 characters.

The schemas say what a body looks like; each request schema also says, in `apply_limits(check,
loc)`, which of its fields these limits bound. A route takes its body as `limited(Model)`: FastAPI
validates the body as `Model`, then the limits are applied with the app's settings. A refusal is
the 422 pydantic gives for the same constraint (`max_length`, `le`): the field's location, the same
message and the same error type, so a client cannot tell where the limit was checked. A default
above a limit (`limit` 10 when QSIM_MAX_LIMIT is 3) is lowered to the limit, not refused: the client
did not ask for it.
"""

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol, TypeVar

from fastapi import Depends, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel
from pydantic_core import InitErrorDetails, ValidationError

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class Limits:
    question_chars: int
    limit: int
    batch_questions: int
    bulk_questions: int
    filter_keys: int

    @classmethod
    def of(cls, settings: Any) -> "Limits":
        return cls(
            question_chars=settings.max_question_chars,
            limit=settings.max_limit,
            batch_questions=settings.max_batch_questions,
            bulk_questions=settings.max_bulk_questions,
            filter_keys=settings.max_filter_keys,
        )


def limits_of(request: Request) -> Limits:
    return Limits.of(request.app.state.settings)


class LimitCheck:
    """Collects the limit violations of one request body (locations relative to the body)."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self._errors: list[InitErrorDetails] = []

    def question(self, loc: Loc, text: str | None) -> None:
        """A question's text: at most QSIM_MAX_QUESTION_CHARS characters."""
        maximum = self.limits.question_chars
        if text is not None and len(text) > maximum:
            self._errors.append({"type": "string_too_long", "loc": loc, "input": text, "ctx": {"max_length": maximum}})

    def at_most(self, loc: Loc, value: int | None, maximum: int) -> None:
        if value is not None and value > maximum:
            self._errors.append({"type": "less_than_equal", "loc": loc, "input": value, "ctx": {"le": maximum}})

    def result_limit(self, loc: Loc, body: BaseModel, name: str = "limit") -> None:
        """A field that asks for at most so many results: a value sent is held to QSIM_MAX_LIMIT, a
        default above it is lowered to it."""
        maximum = self.limits.limit
        if name in body.model_fields_set:
            self.at_most((*loc, name), getattr(body, name), maximum)
        elif getattr(body, name) > maximum:
            setattr(body, name, maximum)

    def items(self, loc: Loc, values: Sequence[Any] | None, maximum: int) -> bool:
        """False (and a violation) when `values` holds more than `maximum` items."""
        if values is None or len(values) <= maximum:
            return True
        self._errors.append({
            "type": "too_long", "loc": loc, "input": values,
            "ctx": {"field_type": "List", "max_length": maximum, "actual_length": len(values)},
        })
        return False

    def filter(self, loc: Loc, where: Mapping[str, Any] | None) -> None:
        """A metadata filter: at most QSIM_MAX_FILTER_KEYS keys."""
        maximum = self.limits.filter_keys
        if where is not None and len(where) > maximum:
            problem = ValueError(f"a filter may name at most {maximum} metadata keys, got {len(where)}")
            self._errors.append({"type": "value_error", "loc": loc, "input": where, "ctx": {"error": problem}})

    def raise_if_violated(self) -> None:
        if not self._errors:
            return
        # pydantic words the messages, exactly as it does for a Field(max_length=...) or le=...
        worded = ValidationError.from_exception_data("limits", self._errors).errors()
        raise RequestValidationError(
            [{"loc": ("body", *error["loc"]), "msg": error["msg"], "type": error["type"]} for error in worded]
        )


class LimitedBody(Protocol):
    def apply_limits(self, check: LimitCheck, loc: Loc = ()) -> None: ...


Body = TypeVar("Body", bound=LimitedBody)


def apply_limits(body: LimitedBody, limits: Limits) -> None:
    """Raises the 422 of every limit `body` is over (and lowers the defaults above one)."""
    check = LimitCheck(limits)
    body.apply_limits(check)
    check.raise_if_violated()


def limited(model: type[Body], *, optional: bool = False) -> Any:
    """The request body as a route parameter type: validated as `model`, then held to the limits of
    the app's settings. `optional`: the body may be left out (the parameter is then None)."""

    async def checked_body(request: Request, body: Any) -> Any:
        if body is not None:
            apply_limits(body, limits_of(request))
        return body

    annotation = model | None if optional else model
    # FastAPI reads the body's type from the signature; `model` is known only here.
    checked_body.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
        inspect.Parameter("request", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Request),
        inspect.Parameter(
            "body", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=annotation,
            default=None if optional else inspect.Parameter.empty,
        ),
    ])
    return Annotated[annotation, Depends(checked_body)]
