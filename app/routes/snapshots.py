"""Snapshots: the list on disk, and rolling the learner back to one of them.

The API never touches the model itself: a rollback is recorded in Redis (`streams.control`) and the active
learner carries it out before its next micro-batch, so the request survives learner restarts.
"""

from __future__ import annotations

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from app.auth import Scope, require
from app.deps import ControlDep, HolderDep, KeysDep, RedisDep
from app.errors import ERRORS, ApiError
from app.schemas import RollbackAccepted, RollbackOptions, SnapshotInfo
from learner.snapshots import (
    Manifest,
    SnapshotError,
    SnapshotNotFoundError,
    SnapshotStore,
    is_snapshot_id,
)
from streams.control import learner_state

router = APIRouter(responses=ERRORS)


@router.get(
    "/v1/snapshots",
    response_model=list[SnapshotInfo],
    dependencies=[Depends(require(Scope.PREDICT))],
    summary="Snapshots on disk, newest first",
)
async def snapshots(holder: HolderDep) -> list[SnapshotInfo]:
    return [_info(m) for m in await run_in_threadpool(holder.store.list)]


@router.put(
    "/v1/snapshots/{snapshot_id}/pin",
    response_model=SnapshotInfo,
    dependencies=[Depends(require(Scope.ADMIN))],
    summary="Keep a snapshot whatever retention (RETENTIVE_SNAPSHOT_KEEP) would remove",
)
async def pin(snapshot_id: str, holder: HolderDep) -> SnapshotInfo:
    return _info(await _set_pin(holder.store, snapshot_id, pinned=True))


@router.delete(
    "/v1/snapshots/{snapshot_id}/pin",
    response_model=SnapshotInfo,
    dependencies=[Depends(require(Scope.ADMIN))],
    summary="Let retention remove a snapshot again once it is no longer among the newest or the best",
)
async def unpin(snapshot_id: str, holder: HolderDep) -> SnapshotInfo:
    return _info(await _set_pin(holder.store, snapshot_id, pinned=False))


async def _set_pin(store: SnapshotStore, snapshot_id: str, pinned: bool) -> Manifest:
    _check_snapshot_id(snapshot_id)
    try:
        return await run_in_threadpool(store.pin, snapshot_id, pinned)
    except SnapshotNotFoundError:
        raise ApiError(
            404, "snapshot_not_found", f"no snapshot {snapshot_id}; see GET /v1/snapshots"
        ) from None
    except SnapshotError as err:
        raise ApiError(409, "snapshot_unusable", str(err)) from None


def _check_snapshot_id(snapshot_id: str) -> None:
    if not is_snapshot_id(snapshot_id):
        raise ApiError(
            404, "snapshot_not_found", f"{snapshot_id!r} is not a snapshot id; see GET /v1/snapshots"
        )


def _info(m: Manifest) -> SnapshotInfo:
    return SnapshotInfo(
        id=m.id,
        version=m.version,
        parent=m.parent,
        created_at=m.created_at,
        pinned=m.pinned,
        updates=m.info.get("updates"),
        mean_accuracy=m.info.get("mean_accuracy"),
        alarms=m.info.get("alarms"),
        promoted=m.info.get("promoted", True) is not False,
    )


@router.post(
    "/v1/snapshots/{snapshot_id}/rollback",
    status_code=202,
    response_model=RollbackAccepted,
    dependencies=[Depends(require(Scope.ADMIN))],
    summary="Continue learning from an earlier snapshot; every replica then serves it",
)
async def rollback(
    snapshot_id: str,
    holder: HolderDep,
    control: ControlDep,
    client: RedisDep,
    keys: KeysDep,
    options: RollbackOptions | None = None,
) -> RollbackAccepted:
    _check_snapshot_id(snapshot_id)
    try:
        await run_in_threadpool(holder.store.load, snapshot_id, only=[])
    except SnapshotNotFoundError:
        raise ApiError(
            404, "snapshot_not_found", f"no snapshot {snapshot_id}; see GET /v1/snapshots"
        ) from None
    except SnapshotError as err:
        raise ApiError(409, "snapshot_unusable", str(err)) from None
    replay = options.replay if options else False
    wanted = await run_in_threadpool(control.request_rollback, snapshot_id, replay)
    state = await run_in_threadpool(learner_state, client, keys)
    return RollbackAccepted(
        snapshot_id=snapshot_id, replay=replay, requested_at=wanted.requested_at, learner=state
    )
