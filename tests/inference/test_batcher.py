"""The cross-request micro-batcher: same embeddings, batches formed, errors delivered.

The numeric tests run the real recognizer (OpenVINO, the CPU default); the
scheduling tests use a recording embedder so batch boundaries can be asserted.
Every worker thread's exception is collected and re-raised in the test.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from app.core.types import FloatArray, ImageArray
from app.errors import ServerBusy
from app.inference.align import align_face
from app.inference.arcface import ArcFaceEmbedder
from app.inference.batcher import BatchingEmbedder
from app.inference.image import decode_image
from app.inference.loader import build_detector, build_embedder, load_model
from app.inference.session import RuntimeOptions
from bench.common import list_images

DIM = 4


def run_threads(count: int, work: Callable[[int], object]) -> None:
    """``work(i)`` in ``count`` threads started together; their exceptions re-raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(count)

    def body(index: int) -> None:
        try:
            start.wait()
            work(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    if errors:
        raise errors[0]


class Recording:
    """A fake embedder: row i's embedding is its crop's first pixel value; batches logged."""

    dim = DIM

    def __init__(self, delay_s: float = 0.0, fail: bool = False) -> None:
        self.delay_s = delay_s
        self.fail = fail
        self.batches: list[int] = []
        self._lock = threading.Lock()

    def embed(self, aligned_faces: ImageArray) -> FloatArray:
        with self._lock:
            self.batches.append(aligned_faces.shape[0])
        time.sleep(self.delay_s)
        if self.fail:
            raise RuntimeError("the engine failed")
        values = aligned_faces[:, 0, 0, 0].astype(np.float32)
        return np.repeat(values[:, None], DIM, axis=1)


def crops(*values: int) -> ImageArray:
    return np.stack([np.full((2, 2, 3), v, dtype=np.uint8) for v in values])


@pytest.fixture
def batcher_factory() -> Iterator[Callable[..., BatchingEmbedder]]:
    made: list[BatchingEmbedder] = []

    def make(inner: Recording, **options: float) -> BatchingEmbedder:
        batcher = BatchingEmbedder(inner, **options)  # type: ignore[arg-type]
        made.append(batcher)
        return batcher

    yield make
    for batcher in made:
        batcher.close()


def test_every_caller_gets_its_own_rows(batcher_factory: Callable[..., BatchingEmbedder]) -> None:
    inner = Recording(delay_s=0.01)
    batcher = batcher_factory(inner, max_batch=64, max_wait_s=0.02)
    results: dict[int, FloatArray] = {}

    def work(index: int) -> None:
        results[index] = batcher.embed(crops(index, index + 100))

    run_threads(12, work)

    for index, rows in results.items():
        np.testing.assert_array_equal(rows[:, 0], [index, index + 100])
    assert sum(inner.batches) == 24
    assert len(inner.batches) < 12  # concurrent callers shared batches


def test_a_batch_never_holds_more_than_max_batch_faces(
    batcher_factory: Callable[..., BatchingEmbedder],
) -> None:
    inner = Recording(delay_s=0.005)
    batcher = batcher_factory(inner, max_batch=5, max_wait_s=0.02)

    run_threads(10, lambda index: batcher.embed(crops(index, index)))

    assert max(inner.batches) <= 5
    assert sum(inner.batches) == 20


def test_a_request_larger_than_max_batch_runs_alone(
    batcher_factory: Callable[..., BatchingEmbedder],
) -> None:
    inner = Recording()
    batcher = batcher_factory(inner, max_batch=2)

    rows = batcher.embed(crops(1, 2, 3, 4, 5))

    assert inner.batches == [5]  # the embedder itself splits by the manifest's limit
    np.testing.assert_array_equal(rows[:, 0], [1, 2, 3, 4, 5])


def test_a_lone_request_does_not_wait_with_no_max_wait(
    batcher_factory: Callable[..., BatchingEmbedder],
) -> None:
    inner = Recording()
    batcher = batcher_factory(inner, max_batch=32, max_wait_s=0.0)

    for value in range(3):
        np.testing.assert_array_equal(batcher.embed(crops(value))[:, 0], [value])

    assert inner.batches == [1, 1, 1]


def test_no_faces_never_reach_the_engine(batcher_factory: Callable[..., BatchingEmbedder]) -> None:
    inner = Recording()
    batcher = batcher_factory(inner, max_batch=8)

    assert batcher.embed(np.empty((0, 2, 2, 3), np.uint8)).shape == (0, DIM)
    assert inner.batches == []


def test_an_engine_error_reaches_every_caller_of_the_batch_and_the_runner_survives(
    batcher_factory: Callable[..., BatchingEmbedder],
) -> None:
    inner = Recording(delay_s=0.01, fail=True)
    batcher = batcher_factory(inner, max_batch=64, max_wait_s=0.02)
    failures: list[str] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        with pytest.raises(RuntimeError, match="the engine failed") as raised:
            batcher.embed(crops(index))
        with lock:
            failures.append(str(raised.value))

    run_threads(6, work)
    assert len(failures) == 6

    inner.fail = False
    np.testing.assert_array_equal(batcher.embed(crops(7))[:, 0], [7])


def test_after_close_requests_are_refused_as_busy() -> None:
    batcher = BatchingEmbedder(Recording(), max_batch=4)
    batcher.close()

    with pytest.raises(ServerBusy):
        batcher.embed(crops(1))


def test_close_fails_requests_still_queued() -> None:
    inner = Recording(delay_s=0.3)
    batcher = BatchingEmbedder(inner, max_batch=1)
    outcomes: list[str] = []
    lock = threading.Lock()

    def work(index: int) -> None:
        try:
            batcher.embed(crops(index))
            outcome = "done"
        except ServerBusy:
            outcome = "busy"
        with lock:
            outcomes.append(outcome)

    with ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(work, i) for i in range(3)]
        time.sleep(0.1)  # the first runs, two wait
        batcher.close()
        for future in futures:
            future.result(timeout=30)

    assert sorted(outcomes) == ["busy", "busy", "done"]


@pytest.mark.parametrize(("max_batch", "wait"), [(0, 0.0), (4, -1.0)])
def test_invalid_limits_are_refused(max_batch: int, wait: float) -> None:
    with pytest.raises(ValueError, match="must"):
        BatchingEmbedder(Recording(), max_batch=max_batch, max_wait_s=wait)


# --- the real recognizer -----------------------------------------------------------------


@pytest.fixture(scope="module")
def recognizer(models_dir: Path) -> ArcFaceEmbedder:
    options = RuntimeOptions(engine="openvino", intra_op_threads=2)
    model = load_model(
        "w600k_mbf_int8", "recognizer", models_dir=models_dir, catalog_dir=None, options=options
    )
    return build_embedder(model)


@pytest.fixture(scope="module")
def aligned_faces(models_dir: Path, data_root: Path) -> NDArray[np.uint8]:
    model = load_model(
        "scrfd_500m", "detector", models_dir=models_dir, catalog_dir=None, options=RuntimeOptions()
    )
    detector = build_detector(model)
    faces = []
    for path in [
        *list_images(data_root / "photos"),
        *list_images(data_root / "lfw" / "images")[:6],
    ]:
        image = decode_image(path.read_bytes(), max_bytes=1 << 26, max_pixels=1 << 26).pixels
        faces += [align_face(image, d.landmarks) for d in detector.detect(image)]
    return np.stack(faces)


def test_batched_embeddings_equal_unbatched_ones(
    recognizer: ArcFaceEmbedder, aligned_faces: NDArray[np.uint8]
) -> None:
    one_by_one = np.concatenate([recognizer.embed(face[None]) for face in aligned_faces])
    batched = recognizer.embed(aligned_faces)

    np.testing.assert_allclose(batched, one_by_one, atol=2e-5)
    assert np.einsum("ij,ij->i", batched, one_by_one).min() >= 0.99999


def test_concurrent_requests_through_the_batcher_get_their_own_embeddings(
    recognizer: ArcFaceEmbedder, aligned_faces: NDArray[np.uint8]
) -> None:
    expected = np.concatenate([recognizer.embed(face[None]) for face in aligned_faces])
    sizes: list[tuple[int, int]] = []
    batcher = BatchingEmbedder(
        recognizer, max_batch=32, max_wait_s=0.02, observe=lambda f, r: sizes.append((f, r))
    )
    results: dict[int, FloatArray] = {}
    try:
        run_threads(
            len(aligned_faces),
            lambda i: results.__setitem__(i, batcher.embed(aligned_faces[i : i + 1])),
        )
    finally:
        batcher.close()

    for index, rows in results.items():
        np.testing.assert_allclose(rows[0], expected[index], atol=2e-5)
    assert sum(faces for faces, _ in sizes) == len(aligned_faces)
    assert max(requests for _, requests in sizes) > 1


class Meeting(Recording):
    """An inner embedder whose calls wait for each other: it returns only when ``parties``
    calls are inside it at once (else the barrier breaks after 30 s and the call fails)."""

    def __init__(self, parties: int) -> None:
        super().__init__()
        self.meeting = threading.Barrier(parties, timeout=30)

    def embed(self, aligned_faces: ImageArray) -> FloatArray:
        self.meeting.wait()
        return super().embed(aligned_faces)


def test_two_runners_run_two_batches_at_once(
    batcher_factory: Callable[..., BatchingEmbedder],
) -> None:
    inner = Meeting(parties=2)
    batcher = batcher_factory(inner, max_batch=1, runners=2)
    results: dict[int, FloatArray] = {}
    run_threads(2, lambda i: results.__setitem__(i, batcher.embed(crops(i + 1))))
    assert sorted(inner.batches) == [1, 1]
    for index, rows in results.items():
        assert rows.shape == (1, DIM)
        assert rows[0, 0] == index + 1


def test_one_runner_never_overlaps_two_batches(
    batcher_factory: Callable[..., BatchingEmbedder],
) -> None:
    inner = Meeting(parties=2)
    inner.meeting = threading.Barrier(2, timeout=1)  # what a second runner would meet
    batcher = batcher_factory(inner, max_batch=1, runners=1)
    with pytest.raises(threading.BrokenBarrierError):
        batcher.embed(crops(1))


def test_close_stops_every_runner_and_refuses_later_calls(
    batcher_factory: Callable[..., BatchingEmbedder],
) -> None:
    batcher = batcher_factory(Recording(), max_batch=4, runners=3)
    assert batcher.embed(crops(7))[0, 0] == 7
    batcher.close()
    assert not any(runner.is_alive() for runner in batcher._runners)
    with pytest.raises(ServerBusy):
        batcher.embed(crops(1))


@pytest.mark.parametrize("runners", [0, -1])
def test_a_batcher_needs_a_runner(runners: int) -> None:
    with pytest.raises(ValueError, match="runners"):
        BatchingEmbedder(Recording(), max_batch=4, runners=runners)
