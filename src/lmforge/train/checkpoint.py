"""Resumable training checkpoints, written atomically.

A checkpoint is a directory `RUN/checkpoints/step_NNNNNNN/` with
  model.safetensors      the weights (tied tensors once); when some parameters are frozen (a
                         fine-tuning method such as LoRA), only the trained ones and the buffers:
                         the frozen ones come back from the base model on resume
  optimizer.safetensors  every optimizer state tensor, keyed `state.<param index>.<name>`
  rng.safetensors        each rank's torch RNG state (CPU, and CUDA where present)
  state.json             step, tokens seen, optimizer hyper-parameters, trainer bookkeeping
and `RUN/checkpoints/latest` names the newest one. The directory is staged under a temporary name and
renamed into place only when every file is on disk, so a killed run never leaves a broken checkpoint.
The data position needs no state of its own: the loader derives each step's batch from
(seed, rank, step), so restoring the step restores the data stream.
Nothing is unpickled: tensors live in safetensors, everything else in JSON.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch

from lmforge.errors import UserError
from lmforge.fileio import atomic_path, write_text_atomic
from lmforge.models.loading import (
    load_model_state,
    load_safetensors,
    model_state,
    save_safetensors,
)

LATEST = "latest"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into tensors (for safetensors) and JSON-able hyper-params."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, state in sd["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{name}"] = value.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = value
    for index, values in meta.get("scalars", {}).items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(
    run_dir: Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    trainer_state: dict,
    rng_states: dict[str, torch.Tensor],
    keep: int = 2,
) -> Path:
    """Write checkpoint `step` atomically, point `latest` at it, keep the newest `keep`."""
    root = Path(run_dir) / "checkpoints"
    target = root / f"step_{step:07d}"
    opt_tensors, opt_meta = optimizer_to_tensors(optimizer)
    with atomic_path(target) as tmp:
        tmp.mkdir()
        weights, frozen = trained_state(model)
        save_safetensors(weights, tmp / "model.safetensors")
        save_safetensors(opt_tensors, tmp / "optimizer.safetensors")
        save_safetensors(rng_states, tmp / "rng.safetensors")
        state = {"step": step, "optimizer": opt_meta, "frozen_omitted": frozen, **trainer_state}
        (tmp / "state.json").write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")
    write_text_atomic(root / LATEST, target.name + "\n")
    for old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def trained_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], bool]:
    """What a checkpoint stores of the model, and whether frozen parameters were left out."""
    state = model_state(model)
    frozen = frozen_names(model)
    return {k: v for k, v in state.items() if k not in frozen}, bool(frozen)


def frozen_names(model: torch.nn.Module) -> set[str]:
    return {name for name, p in model.named_parameters() if not p.requires_grad}


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = Path(run_dir) / "checkpoints"
    pointer = root / LATEST
    if pointer.is_file():
        path = root / pointer.read_text(encoding="utf-8").strip()
        if path.is_dir():
            return path
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(
    path: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
) -> tuple[dict, dict[str, torch.Tensor]]:
    """Restore model (and optimizer) from checkpoint `path`; return (trainer state, RNG states)."""
    path = Path(path)
    state_file = path / "state.json"
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(
            f"checkpoint {path} is corrupt or incomplete ({type(e).__name__}); "
            "delete it to resume from an earlier one"
        ) from None
    omitted = frozen_names(model) if state.get("frozen_omitted") else set()
    load_model_state(
        model, load_safetensors(path / "model.safetensors"), path / "model.safetensors", omitted
    )
    if optimizer is not None:
        tensors = load_safetensors(path / "optimizer.safetensors")
        try:
            optimizer.load_state_dict(optimizer_from_tensors(tensors, state["optimizer"]))
        except (KeyError, ValueError, RuntimeError) as e:
            raise UserError(
                f"checkpoint {path}: optimizer state does not fit this model ({e})"
            ) from None
    rng = load_safetensors(path / "rng.safetensors")
    return state, rng
