"""Zero-downtime model swap: one job at a time, in the background.

``ModelSwitcher`` holds what serves now (``Serving``: a generation's recognizer,
gallery, batcher and use cases) and the previous generation, starts activation and
rollback jobs (``app.core.swap.synchronise`` does the copying) and hands the
result to ``publish``, which the composition root (``app.main``) points at the
app state. Requests that started before a switch finish on the objects they hold.

Both gallery backends: the embedded one (one process owns the gallery) and
PostgreSQL, where several replicas share it. There a job's replica claims the
database-wide job lock (``claim``) and every other replica *follows*: told of the
new active generation (``PointerWatch``, LISTEN/NOTIFY, and a slow poll as a safety
net), it loads that generation's recognizer and switches the same way.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from app.core.gallery import Gallery
from app.core.generations import ActivePointer, Generation, GenerationStore, Replica
from app.core.service import FaceService
from app.core.swap import (
    ProgressBoard,
    SwapCancelled,
    SwapProgress,
    SyncControls,
    synchronise,
)
from app.core.types import FloatArray
from app.errors import (
    FaceRecError,
    ManifestInvalid,
    ModelChecksumMismatch,
    ModelNotFound,
    ModelSwapRejected,
    ModelSwapRunning,
    NoPreviousGeneration,
)
from app.inference.batcher import BatchingEmbedder
from app.inference.image import decode_image
from app.inference.loader import LoadedModel
from app.inference.manifest import ModelManifest, file_sha256, load_manifest, resolve_model_file
from app.storage.sqlite import utc_now

logger = logging.getLogger(__name__)

# A recognizer manifest is a few kB; anything far larger is not one (and is not read).
MAX_MANIFEST_BYTES = 1 << 20
# A stored crop is a 112x112 PNG: generous limits for decoding one.
_CROP_MAX_BYTES = 1 << 22
_CROP_MAX_PIXELS = 1 << 20


# How long a follower waits between looks at the active pointer when no NOTIFY came
# (one cheap SELECT; notifications normally arrive within milliseconds).
FOLLOW_POLL_S = 5.0


class SwapGallery(Gallery, Replica, Protocol):
    """A gallery one generation serves from: the use cases' side and the swap's."""


class SwapStore(GenerationStore, Protocol):
    """The generations of one gallery, as the switcher uses them."""

    def record_origin(
        self, *, model_id: str, dim: int, manifest_path: str, manifest_sha256: str
    ) -> Generation: ...

    def retire_older(self) -> list[int]: ...


# Claim the right to run a job (``ModelSwapRunning`` if another process holds it);
# returns the release, called when the job ends.
ClaimJob = Callable[[], Callable[[], None]]


def no_other_claimants() -> Callable[[], None]:
    """The claim of a gallery one process owns (embedded): nothing to wait for."""
    return lambda: None


@dataclass(frozen=True, slots=True)
class Serving:
    """One generation's serving side."""

    generation: Generation
    recognizer: LoadedModel
    gallery: SwapGallery
    batcher: BatchingEmbedder
    service: FaceService

    def close(self) -> None:
        self.service.close_background()
        self.batcher.close()
        self.gallery.close()


@dataclass(frozen=True, slots=True)
class SyncPacing:
    """How a job shares the CPU: crops per step, and a pause between steps (in which
    waiting requests take the cores). The last step runs under the write barrier."""

    batch_size: int = 32
    pause_s: float = 0.02


@dataclass(frozen=True, slots=True)
class CheckedManifest:
    """A recognizer manifest that passed ``check_recognizer_manifest``."""

    path: Path
    manifest: ModelManifest
    sha256: str  # of the manifest file


def check_recognizer_manifest(path_text: str, *, models_dir: Path) -> CheckedManifest:
    """Validate an admin-given server path: a recognizer manifest whose model file is
    present with the sha256 it states. Errors are ``ModelSwapRejected`` with a
    ``reason``; they never carry the file's contents."""
    path = Path(path_text).expanduser()
    if not path.is_absolute():
        raise _rejected("relative_path", "give the manifest's absolute path on the server")
    if not path.is_file():
        raise _rejected("not_found", f"no manifest file at {path}")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise _rejected("not_a_manifest", f"{path} is not a model manifest")
    try:
        manifest = load_manifest(path)
    except ManifestInvalid as exc:
        logger.warning("activation refused: %s is not a valid manifest", path)
        raise _rejected("not_a_manifest", f"{path} is not a valid model manifest") from exc
    if manifest.kind != "recognizer" or manifest.embedding_dim is None:
        raise _rejected("not_a_recognizer", f"{path} is a {manifest.kind} manifest")
    try:
        resolve_model_file(manifest, [path.parent, models_dir])
    except ModelNotFound as exc:
        raise _rejected("model_file_missing", f"the model file of {path} is not present") from exc
    except ModelChecksumMismatch as exc:
        raise _rejected(
            "model_checksum_mismatch",
            f"the model file of {path} does not have the sha256 its manifest states",
        ) from exc
    return CheckedManifest(path=path.resolve(), manifest=manifest, sha256=file_sha256(path))


def gate_refused(manifest: ModelManifest) -> bool:
    """True when ``python -m training evaluate --gate`` decided against this candidate
    (``metrics.promotion.promoted`` false). Manifests without a decision (catalog
    models, never gated) are not refused."""
    promotion = (manifest.metrics or {}).get("promotion")
    return isinstance(promotion, dict) and promotion.get("promoted") is False


def _rejected(reason: str, message: str) -> ModelSwapRejected:
    return ModelSwapRejected(message, reason=reason)


class ModelSwitcher:
    """Activation and rollback jobs over the generations of one gallery."""

    def __init__(
        self,
        store: SwapStore,
        active: Serving,
        *,
        open_serving: Callable[[Generation, Serving], Serving],
        models_dir: Path,
        store_aligned_crops: bool,
        pacing: SyncPacing = SyncPacing(),
        claim: ClaimJob = no_other_claimants,
    ) -> None:
        """``claim``: the job lock shared with other processes serving the same gallery."""
        self._claim = claim
        self._follower: threading.Thread | None = None
        self._poke = threading.Event()
        self._pacing = pacing
        self._store = store
        self._active = active
        self._previous: Serving | None = None
        self._open_serving = open_serving
        self._models_dir = models_dir
        self._store_crops = store_aligned_crops
        self._publish: Callable[[Serving], None] | None = None
        self._board = ProgressBoard()
        self._lock = threading.Lock()  # one job at a time; guards active/previous
        self._job: threading.Thread | None = None
        self._stopping = threading.Event()
        self._retired: Serving | None = None  # the generation a switch let go of

    @property
    def active(self) -> Serving:
        return self._active

    def attach(self, publish: Callable[[Serving], None]) -> None:
        """Where a switch is published (the app state); set once the app exists."""
        self._publish = publish
        self._poke.set()  # a follower catches up with a switch made before this

    def progress(self) -> SwapProgress | None:
        return self._board.snapshot()

    def pointer(self) -> ActivePointer | None:
        return self._store.active()

    def generations(self) -> list[Generation]:
        return self._store.generations()

    # --- starting jobs (callers: the admin routes, in a worker thread) ------------------

    def activate(self, manifest_path: str, *, by: str | None, force: bool = False) -> SwapProgress:
        """Start re-embedding into a new generation for ``manifest_path``'s recognizer.

        ``force``: activate a candidate the promotion gate decided against."""
        with self._lock:
            self._refuse_if_running()
            self._refuse_without_crops()
            checked = check_recognizer_manifest(manifest_path, models_dir=self._models_dir)
            if gate_refused(checked.manifest) and not force:
                raise _rejected(
                    "not_promoted",
                    "the promotion gate decided against this candidate (metrics.promotion in "
                    "its manifest); activate it anyway with force",
                )
            active = self._active.generation
            if (
                checked.manifest.model_id == active.model_id
                and checked.sha256 == active.manifest_sha256
            ):
                raise _rejected("already_active", "that recognizer is the one serving")
            progress = self._start(
                "activate",
                None,
                checked.manifest.model_id,
                by,
                lambda: self._activate_job(checked, by),
            )
        return progress

    def _current_store_active(self) -> None:
        """Under the job claim: another replica may have switched since we last looked."""
        pointer = self._store.active()
        number = 0 if pointer is None else pointer.generation
        if number != self._active.generation.number:
            raise ModelSwapRunning(
                f"generation {number} was activated by another replica and this one is "
                "still switching to it; try again in a few seconds",
                target_model_id=None,
            )

    def rollback(self, *, by: str | None) -> SwapProgress:
        with self._lock:
            self._refuse_if_running()
            self._refuse_without_crops()
            pointer = self._store.active()
            if pointer is None or pointer.previous is None:
                raise NoPreviousGeneration("no earlier gallery generation to return to")
            target = self._store.get(pointer.previous)
            progress = self._start(
                "rollback",
                target.number,
                target.model_id,
                by,
                lambda: self._rollback_job(target, by),
            )
        return progress

    def _refuse_if_running(self) -> None:
        current = self._board.snapshot()
        if current is not None and current.running:
            raise ModelSwapRunning(
                f"a model {current.action} to {current.target_model_id} is running "
                f"({current.faces_done}/{current.faces_total} faces); wait for it",
                target_model_id=current.target_model_id,
            )

    def _refuse_without_crops(self) -> None:
        if not self._store_crops:
            raise _rejected(
                "crops_off",
                "FACEREC_STORE_ALIGNED_CROPS is off: new enrollments could not be re-embedded",
            )
        missing = self._active.gallery.faces_without_crop()
        if missing:
            raise _rejected(
                "faces_without_crop",
                f"{missing} faces were stored without an aligned crop and cannot be "
                "re-embedded: delete and enroll them again first",
            )

    def _start(
        self,
        action: str,
        target: int | None,
        model_id: str,
        by: str | None,
        job: Callable[[], None],
    ) -> SwapProgress:
        release = self._claim()
        try:
            self._current_store_active()
        except BaseException:
            release()
            raise
        self._board.show(
            SwapProgress(
                action=action,
                state="loading",
                target_generation=target,
                target_model_id=model_id,
                started_at=utc_now(),
                requested_by=by,
            )
        )
        self._job = threading.Thread(target=self._run, args=(job, release), name=f"model-{action}")
        self._job.start()
        progress = self._board.snapshot()
        assert progress is not None
        return progress

    # --- the jobs (their own thread) ----------------------------------------------------

    def _run(self, job: Callable[[], None], release: Callable[[], None]) -> None:
        try:
            self._run_job(job)
        finally:
            release()

    def _run_job(self, job: Callable[[], None]) -> None:
        try:
            job()
        except SwapCancelled:
            self._board.update(state="cancelled", finished_at=utc_now())
            logger.warning("model swap cancelled: the service is stopping")
        except FaceRecError as exc:
            self._board.update(state="failed", finished_at=utc_now(), error_code=exc.code)
            logger.error("model swap failed: [%s] %s", exc.code, exc.message)
        except Exception:
            self._board.update(state="failed", finished_at=utc_now(), error_code="internal_error")
            logger.exception("model swap failed")
        else:
            self._board.update(state="done", finished_at=utc_now())

    def _activate_job(self, checked: CheckedManifest, by: str | None) -> None:
        manifest = checked.manifest
        assert manifest.embedding_dim is not None  # checked
        origin = self._active.generation
        if origin.number == 0:
            self._store.record_origin(
                model_id=origin.model_id,
                dim=origin.dim,
                manifest_path=origin.manifest_path,
                manifest_sha256=origin.manifest_sha256,
            )
        generation = self._store.create(
            model_id=manifest.model_id,
            dim=manifest.embedding_dim,
            manifest_path=str(checked.path),
            manifest_sha256=checked.sha256,
            created_by=by,
        )
        self._board.update(target_generation=generation.number)
        logger.info(
            "model swap: generation %d for %s (manifest %s), requested by %s",
            generation.number,
            manifest.model_id,
            checked.path,
            by or "-",
        )
        try:
            target = self._open_serving(generation, self._active)
        except BaseException:
            self._store.discard(generation.number)
            raise
        try:
            self._copy_and_switch(target, by)
        except BaseException:
            if self._active is not target:  # failed before the switch: nothing serves it
                target.close()
                self._store.discard(generation.number)
            raise

    def _rollback_job(self, generation: Generation, by: str | None) -> None:
        previous = self._previous
        if previous is not None and previous.generation.number == generation.number:
            target, opened = previous, False
        else:
            self._verify_manifest_unchanged(generation)
            target, opened = self._open_serving(generation, self._active), True
            target.gallery.set_sealed(True)
        try:
            self._copy_and_switch(target, by)
        except BaseException:
            if opened and self._active is not target:
                target.close()
            raise

    def _verify_manifest_unchanged(self, generation: Generation) -> None:
        path = Path(generation.manifest_path)
        actual = file_sha256(path) if path.is_file() else None
        if actual != generation.manifest_sha256:
            raise _rejected(
                "manifest_changed",
                f"generation {generation.number}'s manifest {path} is missing or changed "
                "since it was activated",
            )

    def _copy_and_switch(self, target: Serving, by: str | None) -> None:
        source = self._active
        embed = self._embedder(source, target)
        pacing = self._pacing
        controls = SyncControls(
            pause=lambda: self._stopping.wait(pacing.pause_s),
            stopping=self._stopping.is_set,
            batch_size=pacing.batch_size,
        )

        def switch() -> None:
            self._store.activate(target.generation.number, by=by)
            if self._publish is not None:
                self._publish(target)
            self._active, retired, self._previous = target, self._previous, source
            self._retired = retired

        synchronise(
            source.gallery, target.gallery, embed, self._board, switch=switch, controls=controls
        )
        logger.info(
            "model switched: generation %d (%s) serves; generation %d (%s) kept for rollback",
            target.generation.number,
            target.generation.model_id,
            source.generation.number,
            source.generation.model_id,
        )
        retired, self._retired = self._retired, None
        if retired is not None and retired is not target:
            retired.close()
        self._store.retire_older()

    @staticmethod
    def _embedder(source: Serving, target: Serving) -> Callable[[list[bytes]], FloatArray]:
        def embed(crops: list[bytes]) -> FloatArray:
            pixels = np.stack(
                [
                    decode_image(png, max_bytes=_CROP_MAX_BYTES, max_pixels=_CROP_MAX_PIXELS).pixels
                    for png in crops
                ]
            )
            # One of the serving side's CPU slots: requests keep the others meanwhile.
            with source.service.cpu_stages:
                return target.batcher.embed(pixels)

        return embed

    # --- following another replica's switch (PostgreSQL) -----------------------------

    def start_following(self, poll_s: float = FOLLOW_POLL_S) -> None:
        """Switch whenever the store's active generation is not ours (another replica
        activated it): at each ``poke`` (a NOTIFY) and every ``poll_s`` otherwise."""
        self._follower = threading.Thread(
            target=self._follow_loop, args=(poll_s,), name="model-follow", daemon=True
        )
        self._follower.start()

    def poke(self) -> None:
        """The active pointer may have changed (called from the database listener)."""
        self._poke.set()

    def _follow_loop(self, poll_s: float) -> None:
        failed: str | None = None
        while not self._stopping.is_set():
            self._poke.wait(poll_s)
            self._poke.clear()
            if self._stopping.is_set():
                return
            try:
                self.follow()
                failed = None
            except FaceRecError as exc:
                if failed != exc.code:  # once per cause, not every poll
                    logger.error(
                        "cannot switch to the active gallery generation: [%s] %s; this "
                        "replica keeps serving the one before (its enrollments are refused "
                        "with model_switched)",
                        exc.code,
                        exc.message,
                    )
                failed = exc.code
            except Exception:
                if failed != "internal_error":
                    logger.exception("cannot switch to the active gallery generation")
                failed = "internal_error"

    def follow(self) -> bool:
        """Switch to the store's active generation if it is not ours; True if switched."""
        with self._lock:
            current = self._board.snapshot()
            if self._publish is None or (current is not None and current.running):
                return False  # not serving yet, or our own job publishes
            pointer = self._store.active()
            number = 0 if pointer is None else pointer.generation
            source = self._active
            if number == source.generation.number:
                return False
            previous = self._previous
            if previous is not None and previous.generation.number == number:
                target = previous
            else:
                generation = self._store.get(number)
                self._verify_manifest_unchanged(generation)
                target = self._open_serving(generation, source)
            target.gallery.set_sealed(False)
            self._publish(target)
            source.gallery.set_sealed(True)
            retired = self._previous
            self._active, self._previous = target, source
        logger.info(
            "model switched by another replica: generation %d (%s) serves",
            target.generation.number,
            target.generation.model_id,
        )
        if retired is not None and retired is not target:
            retired.close()
        return True

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop a running job (its generation is left unactivated) and close everything."""
        self._stopping.set()
        self._poke.set()
        if self._follower is not None:
            self._follower.join()
        job = self._job
        if job is not None:
            job.join()
        for serving in {id(s): s for s in (self._active, self._previous) if s}.values():
            serving.close()


class PointerWatch:
    """A ``notifications.Subscriber`` of the active-generation channel: pokes the switcher."""

    def __init__(self, switcher: ModelSwitcher) -> None:
        self._switcher = switcher

    def resync(self) -> None:
        self._switcher.poke()

    def notified(self, payload: str) -> None:
        self._switcher.poke()


__all__ = [
    "CheckedManifest",
    "ModelSwitcher",
    "PointerWatch",
    "Serving",
    "SwapGallery",
    "SwapStore",
    "check_recognizer_manifest",
]
