"""The shipped recognizer thresholds are reproducible and not stale.

Every measured manifest records the committed command that wrote its thresholds
(``bench.calibration --write-manifests``), the pipeline it measured, and the thresholds
of a small fixed LFW sample. These tests check the record against the manifest and the
current defaults, then re-run the command on the sample through the service and require
the sample's thresholds to come out where the record says: a change to detection,
alignment, the recognizer or its import steps that moves similarities fails here until
the manifests are regenerated.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from app.config import Settings
from app.inference.catalog import resolve_manifest
from app.inference.manifest import CalibrationRecord, ModelManifest, load_manifest
from bench import calibration as bench_calibration
from training.evaluation import CALIBRATION_FARS, allowed_false_accepts, far_key, round_up

MANIFESTS = sorted(bench_calibration.MANIFESTS_DIR.glob("*.json"))
# A manifest whose threshold is a placeholder says so (models/README.md).
PLACEHOLDER = "NOT MEASURED"
# LFW View 2: the images of pairs.txt (shared/README.md).
LFW_IMAGES = 7701
# How far the sample's recalibrated thresholds may move before the manifest counts as
# stale. /embed is deterministic and a photo's embedding does not depend on any other
# photo, so an unchanged pipeline reproduces the recorded values; and a threshold is an
# order statistic of the similarities, so it moves by at most the largest change of any
# one similarity. The slack admits the numerical noise of another CPU or onnxruntime
# build (similarities within ~1e-5). Switching flip-sum off moves the sample's thresholds
# by 1.1e-3 (FAR 1e-2) and 6.8e-4 (1e-3) (bench/README.md, "Calibration").
CHECK_TOLERANCE = 2e-4
# Held-out FAR of a FAR with at least this many false accepts allowed in-sample must be
# within a factor HELD_OUT_FACTOR of the target: far off, the threshold does not transfer.
HELD_OUT_MIN_FALSE_ACCEPTS = 100
HELD_OUT_FACTOR = 3.0


def recognizer_manifests() -> list[tuple[Path, ModelManifest]]:
    loaded = [(path, load_manifest(path)) for path in MANIFESTS]
    return [(path, manifest) for path, manifest in loaded if manifest.kind == "recognizer"]


def measured() -> list[tuple[Path, ModelManifest, CalibrationRecord]]:
    found = []
    for path, manifest in recognizer_manifests():
        assert manifest.thresholds is not None
        record = manifest.thresholds.calibration
        if isinstance(record, CalibrationRecord):
            found.append((path, manifest, record))
    return found


MEASURED = measured()


def test_every_recognizer_threshold_is_measured_or_marked_a_placeholder() -> None:
    for path, manifest in recognizer_manifests():
        assert manifest.thresholds is not None
        record = manifest.thresholds.calibration
        if isinstance(record, CalibrationRecord):
            continue
        assert record is not None, f"{path.name}: no calibration at all"
        assert record.startswith(PLACEHOLDER), f"{path.name}: prose, not a calibration record"
        assert manifest.thresholds.far is None
        assert manifest.thresholds.by_far == {}
    names = {manifest.name for _, manifest, _ in MEASURED}
    assert {"w600k_mbf_int8", "w600k_mbf_int8_fast"} <= names  # the local models


@pytest.mark.parametrize(
    ("path", "manifest", "record"), MEASURED, ids=[p.stem for p, _, _ in MEASURED]
)
def test_the_record_describes_this_manifest_and_the_default_pipeline(
    path: Path, manifest: ModelManifest, record: CalibrationRecord
) -> None:
    thresholds = manifest.thresholds
    assert thresholds is not None
    assert thresholds.far is not None
    # The embedding space measured is this manifest's (name, file, import steps, flip).
    assert record.recognizer == manifest.model_id
    default_detector, _ = resolve_manifest(Settings().detector)
    assert record.detector == default_detector.model_id
    # match is the by_far threshold of its FAR; every by_far FAR is one the bench reports,
    # rounded up from the recorded in-sample threshold, with a held-out figure.
    assert thresholds.match == thresholds.by_far[far_key(thresholds.far)]
    assert set(thresholds.by_far) <= {far_key(f) for f in CALIBRATION_FARS}
    assert set(record.in_sample) == set(thresholds.by_far) == set(record.held_out.points)
    for key, value in thresholds.by_far.items():
        assert value == round_up(record.in_sample[key].threshold)
        assert record.in_sample[key].far <= float(key)
    # All of LFW View 2, every image with a face or accounted for.
    assert record.images + record.images_without_face == LFW_IMAGES
    assert record.check.lfw_limit == bench_calibration.CHECK_PAIRS
    assert set(record.check.by_far) == {far_key(f) for f in bench_calibration.CHECK_FARS}


@pytest.mark.parametrize(
    ("path", "manifest", "record"), MEASURED, ids=[p.stem for p, _, _ in MEASURED]
)
def test_the_recorded_command_is_the_committed_cli_on_all_of_lfw(
    path: Path, manifest: ModelManifest, record: CalibrationRecord
) -> None:
    words = shlex.split(record.command)
    assert words[:3] == ["python", "-m", "bench.calibration"]
    args = bench_calibration.parse_args(words[3:])
    assert args.write_manifests
    assert args.lfw_limit is None
    assert args.url is None
    assert manifest.name in (args.recognizer or [])
    assert bench_calibration.manifest_file(manifest.name) == path


@pytest.mark.parametrize(
    ("path", "manifest", "record"), MEASURED, ids=[p.stem for p, _, _ in MEASURED]
)
def test_held_out_fars_stay_near_their_targets(
    path: Path, manifest: ModelManifest, record: CalibrationRecord
) -> None:
    checked = 0
    for key, point in record.held_out.points.items():
        target = float(key)
        if allowed_false_accepts(target, record.impostor_pairs) < HELD_OUT_MIN_FALSE_ACCEPTS:
            continue
        checked += 1
        assert target / HELD_OUT_FACTOR <= point.far <= target * HELD_OUT_FACTOR, (key, point)
    assert checked >= 2


@pytest.mark.slow
@pytest.mark.parametrize(
    ("path", "manifest", "record"), MEASURED, ids=[p.stem for p, _, _ in MEASURED]
)
def test_recalibrating_the_sample_reproduces_the_recorded_thresholds(
    path: Path,
    manifest: ModelManifest,
    record: CalibrationRecord,
    models_dir: Path,
    data_root: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The committed command on the check sample, writing into a copy of the manifest."""
    copy = tmp_path / path.name
    copy.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
    check = record.check

    bench_calibration.main(
        [
            "--models-dir",
            str(models_dir),
            "--data-root",
            str(data_root),
            "--recognizer",
            str(copy),
            "--lfw-limit",
            str(check.lfw_limit),
            "--far",
            "1e-2",
            "--write-manifests",
            "--json-out",
            str(tmp_path / "results.json"),
        ]
    )

    assert "thresholds written to" in capsys.readouterr().out
    rewritten = load_manifest(copy)
    assert rewritten.model_id == manifest.model_id
    assert rewritten.thresholds is not None
    new = rewritten.thresholds.calibration
    assert isinstance(new, CalibrationRecord)
    assert (new.check.images, new.check.impostor_pairs) == (check.images, check.impostor_pairs)
    assert new.recognizer == record.recognizer
    assert new.detector == record.detector
    for key, recorded in check.by_far.items():
        assert new.check.by_far[key] == pytest.approx(recorded, abs=CHECK_TOLERANCE), (
            f"{manifest.name}: the sample's threshold at FAR {key} moved from {recorded} to "
            f"{new.check.by_far[key]}: the manifest's thresholds are stale; regenerate them "
            f"with: {record.command}"
        )
    # The sample run's own match threshold is its in-sample one at FAR 1e-2.
    assert rewritten.thresholds.match == round_up(new.check.by_far["1e-2"])
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    assert results[0]["check"] == new.check.model_dump()


def test_writing_thresholds_into_the_manifest_of_another_model_is_refused(tmp_path: Path) -> None:
    source = bench_calibration.MANIFESTS_DIR / "w600k_mbf_int8.json"
    copy = tmp_path / source.name
    copy.write_text(source.read_text(encoding="utf-8"), encoding="utf-8")
    fast, _ = resolve_manifest("w600k_mbf_int8_fast")

    with pytest.raises(SystemExit, match="describes w600k_mbf_int8@"):
        bench_calibration.write_manifest(copy, {"match": 0.5}, fast.model_id)

    assert copy.read_text(encoding="utf-8") == source.read_text(encoding="utf-8")
