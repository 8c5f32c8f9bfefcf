"""``init.from``: a new model started from a trained run's weights (where names and
shapes match; class layers seeded from a one-class run). The model files themselves
(``model.pt``, ``checkpoint.pt``) are read and written by :mod:`cellstack.modeling.runfolder`,
the RNG state of a checkpoint by :mod:`cellstack.engine.rng`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from cellstack.errors import CellstackError
from cellstack.modeling.runfolder import load_run


@dataclass(frozen=True)
class InitReport:
    """What ``init.from`` loaded into a new model (state-dict keys)."""

    run: Path
    loaded: tuple[str, ...]
    reinitialised: tuple[str, ...]  # class-specific, classes differ
    mismatched: tuple[str, ...]  # same name, other shape (another backbone or width)
    new: tuple[str, ...]  # not in the run (e.g. cascade stages 2-3 from a Mask R-CNN)
    source_classes: tuple[str, ...]
    seeded: tuple[str, ...] = ()  # class layers copied from a one-class run's class

    #: Below this share of the model's tensors loaded, init.from says so on stderr: a
    #: run of another architecture or backbone shares only a part (a Mask R-CNN's 24
    #: of a cascade's 104), and a user who meant to continue a model should hear it.
    PARTIAL = 0.5

    def fraction(self) -> float:
        """The share of the new model's tensors that came from the run (loaded or seeded)."""
        total = len(self.loaded) + len(self.reinitialised) + len(self.mismatched) + len(self.new)
        total += len(self.seeded)
        return (len(self.loaded) + len(self.seeded)) / total if total else 0.0

    def warning(self) -> str | None:
        """A line for stderr when the run fits less than :attr:`PARTIAL` of the model."""
        if self.fraction() >= self.PARTIAL:
            return None
        n = len(self.loaded) + len(self.seeded)
        total = n + len(self.reinitialised) + len(self.mismatched) + len(self.new)
        return (
            f"warning: init.from={self.run} fits only {n} of this model's {total} tensors "
            f"({self.fraction():.0%}: another architecture or backbone?); the rest start "
            "from their initialisation"
        )

    def summary(self) -> str:
        def by_part(keys: tuple[str, ...]) -> str:
            counts = Counter(k.split(".")[0] for k in keys)
            return ", ".join(f"{part} {n}" for part, n in counts.items())

        lines = [
            f"init from {self.run}: loaded {len(self.loaded)} tensors ({by_part(self.loaded)})"
        ]
        if self.reinitialised:
            layers = sorted({k.rsplit(".", 1)[0] for k in self.reinitialised})
            lines.append(
                f"  re-initialised {len(layers)} class layer(s) (the run's classes "
                f"{', '.join(self.source_classes)} differ): {', '.join(layers)}"
            )
        if self.seeded:
            layers = sorted({k.rsplit(".", 1)[0] for k in self.seeded})
            lines.append(
                f"  {len(layers)} class layer(s) start from the run's one class "
                f"{self.source_classes[0]!r} for every class: {', '.join(layers)}"
            )
        if self.mismatched:
            lines.append(
                f"  not loaded, shape differs: {len(self.mismatched)} ({by_part(self.mismatched)}),"
                f" e.g. {self.mismatched[0]}"
            )
        if self.new:
            lines.append(
                f"  not in the run, left at their initialisation: {len(self.new)} "
                f"({by_part(self.new)})"
            )
        return "\n".join(lines)


def _seed_classes(key: str, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor | None:
    """A class layer for ``C`` classes from a one-class run's: each class starts as the
    run's class (its logits, box deltas, mask logits), so a finetuned model begins by
    finding cells as the pretrained one did and learns only what tells the types apart.
    Foreground logits are lowered by ``log C`` so that P(background) stays the run's.
    None when the shapes are not the expected ones."""
    import math

    layer = key.rsplit(".", 2)[-2]
    c = target.shape[0] - 1 if layer == "cls_score" else target.shape[0]
    if layer == "cls_score" and source.shape[0] == 2:
        out = torch.cat([source[:1], source[1:].expand(c, *source.shape[1:])])
        if key.endswith("bias"):
            out = out.clone()
            out[1:] -= math.log(c)
        return out.contiguous()
    if layer == "bbox_pred" and source.shape[0] == 8 and target.shape[0] % 4 == 0:
        n = target.shape[0] // 4
        return torch.cat([source[:4], *[source[4:8]] * (n - 1)]).contiguous()
    if layer == "logits" and source.shape[0] == 1:
        return source.expand(c, *source.shape[1:]).contiguous()
    return None


def init_from_run(model: torch.nn.Module, run: str | Path) -> InitReport:
    """Load a trained run's weights into a new ``model`` wherever they fit.

    Every tensor whose name and shape match loads, except the class-specific layers
    (``model.class_specific_keys()``) when the two models' class names differ: those
    keep their fresh initialisation, as the original re-initialised ``fc_cls``,
    ``fc_reg`` and ``conv_logits`` when finetuning.

    Raises:
        CellstackError: the run is missing, or not one tensor of it fits the model.
    """
    run = Path(run)
    source_cfg, source_classes, state = load_run(run)
    target = model.state_dict()
    classes_differ = tuple(source_classes) != tuple(model.class_names)
    class_keys = model.class_specific_keys() if classes_differ else set()
    loaded, reinit, mismatched = [], [], []
    for key, value in target.items():
        if key not in state:
            continue
        if key in class_keys:
            reinit.append(key)
        elif state[key].shape != value.shape:
            mismatched.append(key)
        else:
            loaded.append(key)
    # Biases and BN counters can match by accident; a model shares weights only if
    # some convolution or linear layer fits.
    if not any(state[k].ndim >= 2 for k in loaded):
        arch = source_cfg.model
        raise CellstackError(
            f"init.from={run}: no weight of that run fits this model (the run is a "
            f"{arch.arch} on {arch.backbone.name}); train with its architecture: "
            "--config configs/finetune.yaml for a built-in, else the run's config.yaml"
        )
    seeded = {}
    if len(source_classes) == 1 and reinit:  # a generalist's one class seeds every class
        seeded = {k: _seed_classes(k, state[k], target[k]) for k in reinit}
        seeded = {k: v for k, v in seeded.items() if v is not None}
        reinit = [k for k in reinit if k not in seeded]
    model.load_state_dict({**{k: state[k] for k in loaded}, **seeded}, strict=False)
    return InitReport(
        seeded=tuple(seeded),
        run=run,
        loaded=tuple(loaded),
        reinitialised=tuple(reinit),
        mismatched=tuple(mismatched),
        new=tuple(k for k in target if k not in state),
        source_classes=tuple(source_classes),
    )
