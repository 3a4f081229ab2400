"""A training run's resume state: the concept's rows, AdamW's moments, the history and the best
epoch so far, saved after every epoch (safetensors + JSON, atomically) beside the checkpoints. An
interrupted run resumes from it to the same result; a finished run deletes it."""

from pathlib import Path

import torch
from safetensors import SafetensorError

from yollava_cli.errors import UserError
from yollava_cli.models.tensor_file import read_tensors, write_tensors

FILE = "resume.safetensors"


def save(folder: Path, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer, meta: dict) -> None:
    """`meta` must say what produced the run (settings, data, base model) for `load` to check."""
    tensors = {"input_rows": params[0].detach().clone(), "output_row": params[1].detach().clone()}
    opt = optimizer.state_dict()
    for index, values in opt["state"].items():
        for key, value in values.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).clone()
    write_tensors(folder / FILE, tensors, {**meta, "param_groups": opt["param_groups"]})


def load(folder: Path, expected: dict, name: str) -> dict | None:
    """The saved state, None when there is none, or a one-line error when it came from other
    settings, data or base model (every key of `expected` must match)."""
    path = folder / FILE
    if not path.exists():
        return None
    try:
        tensors, meta = read_tensors(path)
    except (OSError, SafetensorError) as e:
        raise UserError(f"{path}: the resume state is damaged ({e}); train <{name}> without --resume") from None
    if any(meta.get(key) != value for key, value in expected.items()):
        raise UserError(f"the interrupted run of <{name}> used other settings, data or base model; "
                        "train without --resume (or with the same flags)")
    return {"meta": meta, "tensors": tensors}


def restore(state: dict, params: list[torch.nn.Parameter], optimizer: torch.optim.Optimizer) -> tuple[int, list, dict]:
    """Put the rows and AdamW's moments back; returns (epochs done, history, best)."""
    tensors, meta = state["tensors"], state["meta"]
    with torch.no_grad():
        params[0].copy_(tensors["input_rows"])
        params[1].copy_(tensors["output_row"])
    opt_state = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            opt_state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": opt_state, "param_groups": meta["param_groups"]})
    return len(meta["history"]), meta["history"], meta["best"]


def discard(folder: Path) -> None:
    (folder / FILE).unlink(missing_ok=True)
