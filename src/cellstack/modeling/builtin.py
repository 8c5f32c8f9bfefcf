"""Built-in models: trained runs shipped inside the package, addressed by name.

A built-in is a folder ``cellstack/models/{name}/`` of package data, laid out like a
run folder but with no pickle at all:

- ``model.safetensors``: the weights (float16 where that scores the same);
- ``model.json``: the resolved config, class names, the training objects' statistics
  and the versions that trained it (what ``model.pt`` holds besides the weights);
- ``thresholds.yaml``, ``data_stats.json``: as in a run;
- ``MODEL_CARD.md`` and ``LICENSES.md``: what it saw, how it scores, its licences.

Wherever a run is accepted (``Segmenter.load``, ``cellstack predict``, ``init.from``,
an ensemble YAML's ``models``, the napari widget), a name resolves by
:func:`resolve_run`: an existing path always wins (a folder called ``nuclei`` in the
working directory is a run, and a note says so), ``builtin:NAME`` always means the
built-in, and a bare name that is no path is the built-in of that name.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import torch

from cellstack.errors import CellstackError

WEIGHTS = "model.safetensors"
META = "model.json"
CARD = "MODEL_CARD.md"
#: The licences of what a built-in was trained from.
LICENSES = "LICENSES.md"
PREFIX = "builtin:"


def models_root() -> Path:
    """The package folder holding the built-in models."""
    return Path(str(resources.files("cellstack") / "models"))


def builtin_names() -> list[str]:
    """The names of the built-in models shipped with this install, sorted."""
    root = models_root()
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / WEIGHTS).is_file())


def is_builtin_folder(path: Path) -> bool:
    """Whether ``path`` is laid out as a built-in (safetensors weights + json meta)."""
    return (path / WEIGHTS).is_file() and (path / META).is_file()


def resolve_run(spec: str | Path, base: Path | None = None, *, quiet: bool = False) -> Path:
    """The folder ``spec`` names: a path (relative to ``base`` when given), or a
    built-in model's folder (see the module docstring). An unknown name is returned as
    the path it would be, for the caller's "not found" message.

    Raises:
        CellstackError: ``builtin:NAME`` with a name that is not built in.
    """
    text = str(spec)
    names = builtin_names()
    if text.startswith(PREFIX):
        name = text[len(PREFIX) :]
        if name not in names:
            raise CellstackError(
                f"{text}: no built-in model {name!r} (built-in: {', '.join(names) or 'none'})"
            )
        return models_root() / name
    path = Path(spec) if base is None else base / spec
    if path.exists():
        if text in names and not quiet:
            print(
                f"note: {text} is the folder {path}, not the built-in model {text} "
                f"(write {PREFIX}{text} for the built-in)",
                file=sys.stderr,
            )
        return path
    if text in names:
        return models_root() / text
    return path


def read_builtin(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(meta, float32 weights)`` of a built-in folder, read without pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CellstackError(f"{folder / META}: cannot read ({exc})") from None
    if not isinstance(meta, dict):
        raise CellstackError(f"{folder / META}: expected a mapping")
    try:
        weights = load_file(folder / WEIGHTS)
    except (OSError, SafetensorError) as exc:
        raise CellstackError(f"{folder / WEIGHTS}: cannot read ({exc})") from None
    return meta, {k: v.float() if v.is_floating_point() else v for k, v in weights.items()}


def write_builtin(
    folder: Path, state: dict, *, dtype: torch.dtype = torch.float16, extra: dict | None = None
) -> None:
    """Write a built-in folder from a ``model.pt`` state (:func:`~cellstack.modeling.
    files.final_state`): weights as ``dtype`` safetensors, the rest as json."""
    from safetensors.torch import save_file

    from cellstack.fileio import atomic_path, atomic_write

    folder.mkdir(parents=True, exist_ok=True)
    weights = {
        k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
        for k, v in state["model"].items()
    }
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(weights, str(tmp))
    meta = {k: v for k, v in state.items() if k != "model"}
    meta["weights_dtype"] = str(dtype).removeprefix("torch.")
    meta.update(extra or {})
    with atomic_write(folder / META) as f:
        json.dump(meta, f, indent=1)
