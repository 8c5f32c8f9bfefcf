"""The folder ``cellstack cv DATA --out CV`` writes, read and written in one place.

::

    CV/oof/source.json      the dataset CV trains on; written first, the folder's mark
    CV/config.yaml          the config every fold trains with (data.fold set per fold)
    CV/folds.csv            the split (grouped by sample, stratified by cell type)
    CV/fold{k}/             fold k's run folder (cellstack train)
    CV/oof/fold{k}.pt       fold k's raw out-of-fold (OOF) detections (see save_raw)
    CV/oof/submission.csv   the post-processed OOF cells of every fold
    CV/cv.json, CV/cv.md    the CV table: per fold and per cell type
    CV/ensemble.yaml        the fold models as one ensemble (written when CV finishes)

A folder is a CV folder when it holds ``oof/`` and no ``model.pt`` of its own; a
training run folder never has ``oof/``. ``predict``, ``tune`` and ensemble YAMLs all
ask :meth:`CVFolder.find`, so an interrupted CV (some folds trained, some OOF files
missing) is refused the same way everywhere, with what is missing and how to finish it.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from cellstack.config import Config, load_config
from cellstack.errors import CellstackError
from cellstack.fileio import atomic_path, atomic_write
from cellstack.modeling.runfolder import CHECKPOINT, FINAL
from cellstack.structures import Instances

OOF = "oof"


@dataclass(frozen=True)
class CVFolder:
    """A CV folder at ``path`` (see the module docstring)."""

    path: Path

    @classmethod
    def find(cls, path: str | Path) -> CVFolder | None:
        """The CV folder at ``path``, or None when ``path`` is something else."""
        path = Path(path)
        if (path / OOF).is_dir() and not (path / FINAL).is_file():
            return cls(path)
        return None

    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def folds_path(self) -> Path:
        return self.path / "folds.csv"

    @property
    def ensemble_path(self) -> Path:
        return self.path / "ensemble.yaml"

    def config(self) -> Config:
        return load_config(self.config_path)

    def n_folds(self) -> int:
        return self.config().data.folds

    def fold_run(self, k: int) -> Path:
        return self.path / f"fold{k}"

    def oof_path(self, k: int) -> Path:
        return self.path / OOF / f"fold{k}.pt"

    def fold_state(self, k: int) -> str:
        """``"trained"`` (``model.pt``), ``"started"`` (``checkpoint.pt``) or ``"new"``."""
        run = self.fold_run(k)
        if (run / FINAL).is_file():
            return "trained"
        return "started" if (run / CHECKPOINT).is_file() else "new"

    def runs(self, *, allow_unfinished: bool = False) -> list[Path]:
        """The trained fold runs (resolved paths), for an ensemble of the folds.

        Raises:
            CellstackError: CV has not trained every fold (unless ``allow_unfinished``,
                which warns and takes the trained ones), or has trained none.
        """
        k = self.n_folds()
        trained = [i for i in range(k) if self.fold_state(i) == "trained"]
        if len(trained) < k:
            missing = ", ".join(str(i) for i in range(k) if i not in trained)
            if not allow_unfinished or not trained:
                raise CellstackError(
                    f"{self.path}: CV has not finished (fold(s) {missing} of {k} not trained); "
                    f"run the same `cellstack cv` command again to finish it"
                    + (", or pass --allow-unfinished to use the trained folds" if trained else "")
                )
            print(
                f"warning: {self.path} is unfinished; using folds "
                f"{', '.join(map(str, trained))} of {k}",
                file=sys.stderr,
            )
        return [self.fold_run(i).resolve() for i in trained]

    def write_source(self, data: Path) -> None:
        """Record the dataset CV trains on; this also marks the folder as a CV folder."""
        (self.path / OOF).mkdir(parents=True, exist_ok=True)
        with atomic_write(self.path / OOF / "source.json") as f:
            json.dump({"data": str(Path(data).resolve())}, f)

    def data_path(self) -> Path:
        """The dataset CV was trained on (for ``tune`` without DATA)."""
        where = self.path / OOF / "source.json"
        try:
            return Path(json.loads(where.read_text())["data"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CellstackError(f"{where}: cannot read the CV's data path ({exc})") from None

    def save_raw(self, k: int, image_ids: list[str], raws: list[Instances]) -> None:
        """Fold ``k``'s raw OOF detections, compactly: boxes, scores, classes, and RoI
        mask probabilities quantised to uint8 (p * 255, as the original kept its soft
        masks)."""
        items = [
            {
                "image_size": inst.image_size,
                "boxes": inst.boxes.float(),
                "scores": inst.scores.float(),
                # The file's key stays "labels" (the field's old name): CV folders
                # written before the rename still resume.
                "labels": inst.classes,
                "roi_masks": (inst.roi_masks.float() * 255).round().to(torch.uint8),
            }
            for inst in raws
        ]
        with atomic_path(self.oof_path(k)) as tmp:
            torch.save({"image_ids": image_ids, "instances": items}, tmp)

    def load_raw(self, k: int) -> dict[str, Instances]:
        """``{image_id: Instances}`` of fold ``k`` as :meth:`save_raw` wrote them."""
        path = self.oof_path(k)
        try:
            data = torch.load(path, map_location="cpu", weights_only=True)
            return {
                image_id: Instances(
                    tuple(item["image_size"]),
                    boxes=item["boxes"],
                    scores=item["scores"],
                    classes=item["labels"],
                    roi_masks=item["roi_masks"].float() / 255,
                )
                for image_id, item in zip(data["image_ids"], data["instances"], strict=True)
            }
        except Exception as exc:
            raise CellstackError(f"{path}: cannot read OOF predictions ({exc})") from None

    def load_oof(self) -> dict[str, Instances]:
        """Every fold's raw OOF detections, ``{image_id: Instances}``.

        Raises:
            CellstackError: a fold's OOF file is missing (CV has not finished).
        """
        k = self.n_folds()
        missing = [i for i in range(k) if not self.oof_path(i).is_file()]
        if missing:
            raise CellstackError(
                f"{self.path}: no OOF predictions of fold(s) {', '.join(map(str, missing))} "
                f"of {k} yet; run the same `cellstack cv` command again to finish it"
            )
        merged: dict[str, Instances] = {}
        for i in range(k):
            merged.update(self.load_raw(i))
        return merged
