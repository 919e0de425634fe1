"""Model swap (admin keys only): activate a recognizer, roll back, list generations.

The work happens in the background (``app.swap.ModelSwitcher``); these routes only
start it (202) and show it. ``/ready`` shows the progress to anyone.
"""

from __future__ import annotations

import anyio
from fastapi import APIRouter, status

from app.api.deps import RuntimeDep
from app.api.openapi import error_responses
from app.auth.dependencies import AdminCaller
from app.core.generations import Generation
from app.core.swap import SwapProgress
from app.errors import ModelSwapUnsupported
from app.schemas import (
    ActivationOut,
    GenerationBrief,
    GenerationList,
    GenerationOut,
    ModelActivate,
    SwapBrief,
    SwapStatus,
)
from app.swap import ModelSwitcher

router = APIRouter(prefix="/admin/models", tags=["models"])
# Codes every swap route may answer; one error_responses call per route groups them
# by status (merging two dicts would drop one of two 409 lists).
SWAP_CODES = ("unauthorized", "forbidden", "rate_limited", "model_swap_running")


def _switcher(runtime: RuntimeDep) -> ModelSwitcher:
    if runtime.switcher is None:
        raise ModelSwapUnsupported(
            "this gallery cannot switch models while serving: re-embed offline and "
            "restart (docs/training.md)"
        )
    return runtime.switcher


def swap_status(progress: SwapProgress) -> SwapStatus:
    return SwapStatus(
        action=progress.action,
        state=progress.state,
        target_generation=progress.target_generation,
        target_model_id=progress.target_model_id,
        faces_done=progress.faces_done,
        faces_total=progress.faces_total,
        faces_removed=progress.faces_removed,
        faces_skipped=progress.faces_skipped,
        error_code=progress.error_code,
        started_at=progress.started_at,
        finished_at=progress.finished_at,
        requested_by=progress.requested_by,
    )


def swap_brief(progress: SwapProgress) -> SwapBrief:
    """What ``/ready`` shows anyone: no key ids."""
    return SwapBrief.model_validate(
        swap_status(progress).model_dump(include=set(SwapBrief.model_fields))
    )


def generation_brief(generation: Generation) -> GenerationBrief:
    return GenerationBrief(number=generation.number, model_id=generation.model_id)


@router.post(
    "/activate",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SwapStatus,
    responses=error_responses(
        *SWAP_CODES,
        "model_swap_unsupported",
        "malformed_request",
        "invalid_request",
        "model_swap_rejected",
    ),
    summary="Switch to another recognizer without downtime (re-embeds the gallery)",
)
async def activate(runtime: RuntimeDep, caller: AdminCaller, body: ModelActivate) -> SwapStatus:
    """Validates the manifest (a recognizer; its model file's sha256), answers at once
    and re-embeds every stored face in the background while the current model keeps
    serving; ``/ready`` shows the progress and, after the switch, the new model."""
    switcher = _switcher(runtime)
    by = caller.key_id if caller else None
    progress = await anyio.to_thread.run_sync(
        lambda: switcher.activate(body.manifest, by=by, force=body.force)
    )
    return swap_status(progress)


@router.post(
    "/rollback",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=SwapStatus,
    responses=error_responses(
        *SWAP_CODES, "model_swap_unsupported", "no_previous_generation", "model_swap_rejected"
    ),
    summary="Return to the previous gallery generation and its recognizer",
)
async def rollback(runtime: RuntimeDep, caller: AdminCaller) -> SwapStatus:
    switcher = _switcher(runtime)
    by = caller.key_id if caller else None
    progress = await anyio.to_thread.run_sync(lambda: switcher.rollback(by=by))
    return swap_status(progress)


@router.get(
    "",
    response_model=GenerationList,
    responses=error_responses("unauthorized", "forbidden", "rate_limited"),
    summary="Gallery generations: which model each holds, when and by whom activated",
)
async def list_generations(runtime: RuntimeDep, _: AdminCaller) -> GenerationList:
    if runtime.switcher is None:
        return GenerationList(
            swap_supported=False, active=0, previous=None, generations=[], swap=None
        )
    switcher = runtime.switcher
    generations, pointer = await anyio.to_thread.run_sync(
        lambda: (switcher.generations(), switcher.pointer())
    )
    active = switcher.active.generation
    if all(g.number != active.number for g in generations):
        generations = [active, *generations]  # generation 0 before its record is written
    progress = switcher.progress()
    return GenerationList(
        swap_supported=True,
        active=active.number,
        previous=None if pointer is None else pointer.previous,
        generations=[
            GenerationOut(
                number=g.number,
                model_id=g.model_id,
                dim=g.dim,
                manifest_path=g.manifest_path,
                manifest_sha256=g.manifest_sha256,
                created_at=g.created_at,
                created_by=g.created_by,
                activations=[ActivationOut(at=a.at, by=a.by) for a in g.activations],
                active=g.number == active.number,
            )
            for g in generations
        ],
        swap=None if progress is None else swap_status(progress),
    )
