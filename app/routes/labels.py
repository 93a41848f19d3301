"""Labels an operator takes out of the model, such as those junk feedback added: the label cap is permanent,
and one key's junk labels would fill it for everyone.

The request is recorded in Redis (`streams.control`); the active learner removes the labels before its next
micro-batch and writes a snapshot at once, so every replica serves the model without them.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from app.auth import Scope, require
from app.deps import ControlDep, KeysDep, RedisDep
from app.errors import ERRORS
from app.schemas import LabelRemoval, LabelRemovalAccepted
from streams.control import learner_state

router = APIRouter(responses=ERRORS)


@router.post(
    "/v1/labels/remove",
    status_code=202,
    response_model=LabelRemovalAccepted,
    dependencies=[Depends(require(Scope.ADMIN))],
    summary="Take labels out of the model: head rows, replayed examples and held-out probe sets",
)
async def remove_labels(
    body: LabelRemoval, control: ControlDep, client: RedisDep, keys: KeysDep
) -> LabelRemovalAccepted:
    labels = sorted(set(body.labels))
    await run_in_threadpool(control.request_label_removal, labels)
    return LabelRemovalAccepted(removing=labels, learner=await run_in_threadpool(learner_state, client, keys))
