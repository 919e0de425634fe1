"""The data every scale benchmark shares: real faces, the probe split, distractors.

``load_scale_data`` gives, for the configured models, the real faces (cached), their
split into mates / probes / background (``probes``), the distractor model fitted on
the background and ``count`` distractors (cached too: synthesising a million takes a
while). Galleries of any size are *nested*: the gallery of N faces is the mates plus
the first ``N - len(mates)`` distractors, so a bigger gallery only adds distractors.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from app.config import Settings
from app.core.types import FloatArray
from bench.distractors import DistractorModel, Distractors, fit_model, synthesize
from bench.probes import ProbeSet, split_probe_set, subject_of
from bench.real_faces import RealFaces, load_real_faces

# Bumped when the synthesis changes, so stale caches are not reused.
DISTRACTOR_FORMAT = 2  # 2: fitted on background identities only, strangers held out


@dataclass(frozen=True, slots=True)
class ScaleData:
    faces: RealFaces
    split: ProbeSet
    model: DistractorModel
    distractors: Distractors

    def gallery(self, size: int) -> tuple[list[str], FloatArray]:
        """Subjects and embeddings of the nested gallery of ``size`` faces (mates first)."""
        extra = size - len(self.split.mates)
        if extra < 0 or extra > len(self.distractors.subjects):
            raise ValueError(f"no gallery of {size} faces from this data")
        mates = [subject_of(identity) for identity in self.split.mates.identities]
        subjects = mates + self.distractors.subjects[:extra]
        embeddings = np.concatenate(
            [self.split.mates.embeddings, self.distractors.embeddings[:extra]]
        )
        return subjects, embeddings


def load_scale_data(
    settings: Settings, data_root: Path, cache_dir: Path, *, count: int, seed: int
) -> ScaleData:
    faces = load_real_faces(settings, data_root, cache_dir)
    split = split_probe_set(faces, seed=seed)
    model = fit_model(split.background, seed=seed)
    key = hashlib.sha256(
        f"{DISTRACTOR_FORMAT}|{faces.model_id}|{len(faces)}|{seed}|{model.centre_scale}".encode()
    ).hexdigest()[:12]
    cache = cache_dir / f"distractors-{key}-{count}.npy"
    if cache.is_file():
        embeddings = np.load(cache, mmap_mode="r")
        subjects_file = cache.with_suffix(".subjects.txt")
        subjects = subjects_file.read_text(encoding="utf-8").split("\n")
        distractors = Distractors(subjects=subjects, embeddings=embeddings)
    else:
        print(f"synthesising {count} distractors (cached in {cache})")
        distractors = synthesize(model, count, seed=seed)
        partial = cache.with_suffix(".partial.npy")
        np.save(partial, distractors.embeddings)
        cache.with_suffix(".subjects.txt").write_text(
            "\n".join(distractors.subjects), encoding="utf-8"
        )
        partial.replace(cache)
    return ScaleData(faces=faces, split=split, model=model, distractors=distractors)
