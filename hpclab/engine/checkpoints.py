"""Step checkpoints of a run: where they are, what a complete one holds, RNG state, and the
:class:`Checkpointer` that saves, rotates, validates and resumes them (and the best weights).

Restarting is the same code path as starting: training always looks for the newest good
checkpoint first. A checkpoint is one file ``checkpoints/step<N>.pt`` written atomically (temp file, rename) and
read with ``weights_only=True``. Before anything of it is loaded into live objects it is
checked completely against them (:func:`state_problems`): every key, every model tensor's
shape and dtype, every optimizer's groups and per-parameter state shapes, every scheduler. A
file that fails is set aside as ``*.pt.unusable`` (kept for inspection, never picked again),
so a run resumes from an older good checkpoint or starts fresh, never from a mix. Analyses
read the models' weights of every kept checkpoint through :func:`model_states`. The files'
names and places are :mod:`hpclab.rundir`'s.
"""

from __future__ import annotations

import copy
import io
import logging
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hpclab.data.hdf5 import data_identity
from hpclab.engine.build import RunParts
from hpclab.errors import CheckpointWriteError, RunConflict
from hpclab.rundir import RunRecordError, best_weights, checkpoint_dir, read_weights, step_checkpoint, step_checkpoints
from hpclab.utils import atomic_path, one_line

log = logging.getLogger("hpclab")

STATE_KEYS = ("step", "models", "optimizers", "schedulers", "scaler", "rng", "best", "stopped")
RNG_KEYS = ("python", "numpy", "torch", "cuda")


def set_aside(path: Path) -> Path:
    """Rename an unusable checkpoint so that no later resume picks it again."""
    aside = path.with_name(f"{path.name}.unusable-{time.strftime('%Y%m%d-%H%M%S')}")
    try:
        path.rename(aside)
    except OSError:  # a read-only results folder (someone else's run, analysed): leave it
        return path
    return aside


def clean_temporaries(run_dir: Path) -> list[Path]:
    """Remove temp files a kill left behind mid-write (``.<name>.<random>.tmp`` from
    :func:`hpclab.utils.atomic_path`). Only the run's owner calls this (it holds the run lock),
    so no live writer's file is removed."""
    removed = []
    for tmp in run_dir.rglob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


# --------------------------------------------------------------------------- validation


def state_problems(
    state: Any,
    models: Mapping[str, nn.Module],
    optimizers: Mapping[str, torch.optim.Optimizer] | None,
    schedulers: Mapping[str, Any] | None,
    scaler: Any = None,
) -> list[str]:
    """Everything that keeps ``state`` from being loaded whole into these live objects; [] when
    it can be. Checked before anything is loaded, so a bad file changes nothing. Optimizers and
    schedulers of None are not checked (loading the weights alone, for an analysis)."""
    if not isinstance(state, dict):
        return [f"holds a {type(state).__name__}, not a checkpoint"]
    missing = [k for k in STATE_KEYS if k not in state]
    if missing:
        return [f"no {', '.join(missing)}"]
    problems = []
    for section, live in (("models", models), ("optimizers", optimizers), ("schedulers", schedulers)):
        if live is None:
            continue
        saved = state[section]
        if not isinstance(saved, dict) or set(saved) != set(live):
            names = sorted(saved) if isinstance(saved, dict) else type(saved).__name__
            problems.append(f"{section} {names} where the run has {sorted(live)}")
    if problems:
        return problems
    for name, model in models.items():
        problems += [f"model {name}: {p}" for p in _tensor_dict_problems(state["models"][name], model.state_dict())]
    for name, opt in (optimizers or {}).items():
        problems += [f"optimizer {name}: {p}" for p in _optimizer_problems(state["optimizers"][name], opt)]
    for name, sched in (schedulers or {}).items():
        saved, live = state["schedulers"][name], sched.state_dict()
        if not isinstance(saved, dict) or set(saved) != set(live):
            problems.append(f"scheduler {name}: keys differ from a {type(sched).__name__}'s")
    if scaler is not None and not isinstance(state["scaler"], dict):
        problems.append("no loss-scaler state for a run that uses one (fp16)")
    ranks = state.get("rng_ranks", [])
    if not isinstance(ranks, list):
        problems.append("per-rank RNG states are not a list")
    elif not all(
        isinstance(rng, dict) and all(k in rng for k in RNG_KEYS) and isinstance(rng["torch"], torch.Tensor)
        for rng in [state["rng"], *ranks]
    ):
        problems.append("incomplete RNG state")
    if not isinstance(state["step"], int) or state["step"] < 0:
        problems.append(f"step {state['step']!r} is not a step count")
    if not isinstance(state["best"], dict) or not {"value", "step"} <= set(state["best"]):
        problems.append("no best-so-far record")
    if state["stopped"] is not None and not isinstance(state["stopped"], str):
        problems.append("early-stop record of the wrong type")
    running = state.get("running", {})
    if not isinstance(running, dict) or not all(isinstance(v, torch.Tensor) for v in running.values()):
        problems.append("metric sums since the last log line are not tensors")
    return problems


def _tensor_dict_problems(saved: Any, live: Mapping[str, torch.Tensor]) -> list[str]:
    if not isinstance(saved, dict):
        return [f"weights are a {type(saved).__name__}"]
    problems = []
    missing, extra = sorted(set(live) - set(saved)), sorted(set(saved) - set(live))
    if missing:
        problems.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    if extra:
        problems.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
    for key in sorted(set(live) & set(saved)):
        a, b = saved[key], live[key]
        if not isinstance(a, torch.Tensor):
            problems.append(f"{key} is not a tensor")
        elif a.shape != b.shape or a.dtype != b.dtype:
            problems.append(f"{key} is {a.dtype} {tuple(a.shape)}, the model has {b.dtype} {tuple(b.shape)}")
    return problems


def _optimizer_problems(saved: Any, opt: torch.optim.Optimizer) -> list[str]:
    if (
        not isinstance(saved, dict)
        or not isinstance(saved.get("state"), dict)
        or not isinstance(saved.get("param_groups"), list)
    ):
        return ["not an optimizer state"]
    groups = opt.param_groups
    if len(saved["param_groups"]) != len(groups):
        return [f"{len(saved['param_groups'])} parameter groups, the optimizer has {len(groups)}"]
    for i, (a, b) in enumerate(zip(saved["param_groups"], groups)):
        if not isinstance(a, dict) or len(a.get("params", ())) != len(b["params"]):
            return [f"parameter group {i} has another number of parameters"]
    params = [p for g in groups for p in g["params"]]
    problems = []
    for index, entry in saved["state"].items():
        if not isinstance(index, int) or not 0 <= index < len(params) or not isinstance(entry, dict):
            problems.append(f"state for parameter {index!r} the optimizer does not have")
            continue
        for key, value in entry.items():  # moments have the parameter's shape; counters are scalars
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape != params[index].shape:
                problems.append(
                    f"{key} of parameter {index} is {tuple(value.shape)}, the parameter {tuple(params[index].shape)}"
                )
    return problems


def _model_problems(saved: Any, models: Mapping[str, nn.Module]) -> list[str]:
    """What keeps the weights of ``models`` in checkpoint ``saved`` from loading into them (a
    subset of the run's models: the others, optimizers and RNG are not looked at); [] when none."""
    if not isinstance(saved, dict) or not isinstance(saved.get("models"), dict):
        return ["no model weights: not a checkpoint"]
    step = saved.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        return [f"step {step!r} is not a step count"]
    missing = sorted(set(models) - set(saved["models"]))
    if missing:
        return [f"no weights of {', '.join(missing)}"]
    return [
        f"model {name}: {p}"
        for name, model in models.items()
        for p in _tensor_dict_problems(saved["models"][name], model.state_dict())
    ]


def model_states(
    run_dir: Path, models: Mapping[str, nn.Module]
) -> Iterator[tuple[int, dict[str, dict[str, torch.Tensor]]]]:
    """``(step, {name: state dict})`` of ``models`` from each kept step checkpoint of the run,
    oldest first: read with ``weights_only=True`` and checked against the live models (keys,
    shapes, dtypes) before they are handed out. A checkpoint that does not read or fit is passed
    over with a warning: an analysis looks at a finished run, whose own resume has its checks."""
    for path in reversed(step_checkpoints(run_dir)):
        try:
            saved = torch.load(path, map_location="cpu", weights_only=True)
            problems = _model_problems(saved, models)
        except Exception as exc:  # truncated zip, bad pickle opcode, refused global
            problems = [one_line(exc)]
        if problems:
            log.warning("%s is left out (%s)", path, "; ".join(problems[:2]))
            continue
        yield saved["step"], {name: saved["models"][name] for name in models}


# --------------------------------------------------------------------------- RNG state


def capture_rng() -> dict[str, Any]:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def capture_rng_ranks() -> list[dict[str, Any]]:
    """Every data-parallel rank's RNG state in rank order (a collective: every rank calls it);
    one process: its own. Ranks draw from their own streams (seeded seed + rank), so each must
    resume its own: with rank 0's alone, a resumed 2-rank GAN drew the same latents on both
    ranks and ended with other metrics than the uninterrupted run."""
    mine = capture_rng()
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [mine]
    # as bytes: all_gather_object's own unpickler fails on tensors (torch 2.15: UntypedStorage)
    buffer = io.BytesIO()
    torch.save(mine, buffer)
    blobs: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(blobs, buffer.getvalue())
    return [torch.load(io.BytesIO(blob), weights_only=True) for blob in blobs]


def rank_rng(state: dict[str, Any], rank: int) -> dict[str, Any]:
    """The RNG state rank ``rank`` resumes with: its own (``rng_ranks``), else rank 0's (a
    checkpoint written by fewer ranks, or before per-rank states were kept)."""
    ranks = state.get("rng_ranks") or []
    return ranks[rank] if rank < len(ranks) else state["rng"]


def restore_rng(state: dict[str, Any]) -> None:
    random.setstate(_tuplify(state["python"]))
    np_state = state["numpy"]
    np.random.set_state((np_state[0], np_state[1].numpy(), *np_state[2:]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(x: Any) -> Any:
    return tuple(_tuplify(v) for v in x) if isinstance(x, (list, tuple)) else x


# --------------------------------------------------------------------------- a run's checkpoints


@dataclass
class RunState:
    """Where training stands: what a checkpoint restores besides weights and optimizers."""

    step: int = 0
    best: dict[str, Any] = field(default_factory=lambda: {"value": None, "step": None})
    stopped: str | None = None  # why training stopped early, once it has
    running: dict[str, torch.Tensor] = field(default_factory=dict)  # metric sums since the last log line


class Checkpointer:
    """Save, rotate, validate and resume one run's step checkpoints, and keep its best weights.

    Data-parallel ranks act together: rank 0 writes, every rank loads, and a checkpoint is
    used only when it loads on every rank.
    """

    def __init__(self, run_dir: Path, parts: RunParts, state: RunState, keep: int) -> None:
        self.run_dir, self.parts, self.state, self.keep = Path(run_dir), parts, state, keep

    def _live(self, training: bool = True) -> dict[str, dict[str, Any]]:
        """The objects a checkpoint restores, by section (only the models when not training)."""
        p = self.parts
        models = {n: p.accelerator.unwrap_model(m) for n, m in p.models.items()}
        return {
            "models": models,
            "optimizers": p.optimizers if training else {},
            "schedulers": p.schedulers if training else {},
        }

    def state_dict(self, rngs: list[dict[str, Any]]) -> dict[str, Any]:
        """What ``step<N>.pt`` holds; ``rngs``: every rank's RNG state (:func:`capture_rng_ranks`)."""
        scaler = self.parts.accelerator.scaler
        return {
            "step": self.state.step,
            **{section: {n: o.state_dict() for n, o in objects.items()} for section, objects in self._live().items()},
            "scaler": scaler.state_dict() if scaler else None,
            "rng": rngs[0],
            "rng_ranks": rngs,  # each rank resumes its own stream (GAN latents, noise, dropout)
            "best": dict(self.state.best),
            "stopped": self.state.stopped,
            # a stop between two log lines must not lose the sums the next line averages
            "running": {k: v.detach().cpu() for k, v in self.state.running.items()},
            "data": self.data_record(),  # a resume on other data is refused
        }

    def data_record(self) -> dict[str, str]:
        """The run's data file and its identity (:func:`hpclab.data.hdf5.data_identity`)."""
        path = self.parts.data.path
        return {"file": str(path), "identity": data_identity(path)}

    def check_same_data(self, saved: dict[str, Any], path: Path) -> None:
        """Refuse a checkpoint trained on other data than the run's file holds now (checkpoints
        written before data was recorded carry no record and are accepted)."""
        record = saved.get("data")
        if not isinstance(record, dict) or not isinstance(record.get("identity"), str):
            return
        now = self.data_record()
        if record["identity"] != now["identity"]:
            raise RunConflict(
                f"{path.name} was trained on other data than {now['file']} holds now ({record['identity'][:20]} in "
                f"{record.get('file')}, now {now['identity'][:20]}): put the original data back to resume, or pass "
                f"force=true to start over on this data"
            )

    def save(self) -> None:
        """Write ``step<N>.pt`` atomically (rank 0) and keep the newest ``keep`` of them; a full
        or read-only disk stops the run with one line, the last good checkpoint kept."""
        accelerator = self.parts.accelerator
        accelerator.wait_for_everyone()
        rngs = capture_rng_ranks()  # a collective: every rank, before rank 0 writes
        if accelerator.is_main_process:
            path = step_checkpoint(self.run_dir, self.state.step)
            try:
                with atomic_path(path) as tmp:
                    torch.save(self.state_dict(rngs), tmp)
            except (OSError, RuntimeError) as exc:  # torch reports a full disk as a RuntimeError
                kept = step_checkpoints(self.run_dir)
                raise CheckpointWriteError(
                    f"could not write {path} ({one_line(exc)}); disk full or not writable? "
                    f"{'the newest good checkpoint ' + kept[0].name + ' is kept' if kept else 'no checkpoint was kept'}"
                    f": free space and run the same command to resume"
                ) from None
            for old in step_checkpoints(self.run_dir)[self.keep :]:
                old.unlink(missing_ok=True)
        accelerator.wait_for_everyone()

    def best_files(self) -> dict[str, Path]:
        return {n: best_weights(self.run_dir, n) for n in self.parts.models}

    def save_best(self) -> None:
        """The current weights of every model as the run's best (rank 0, safetensors)."""
        if not self.parts.is_main:
            return
        from safetensors.torch import save_file

        for name, path in self.best_files().items():
            state = {k: v.contiguous() for k, v in self.parts.unwrap(name).state_dict().items()}
            try:
                with atomic_path(path) as tmp:
                    save_file(state, str(tmp), metadata={"step": str(self.state.step)})
            except Exception as exc:  # OSError, or safetensors' own error on a full disk
                raise CheckpointWriteError(
                    f"could not write {path} ({one_line(exc)}); disk full or not writable? the previous best weights "
                    f"and the newest checkpoint are kept: free space and run the same command to resume"
                ) from None

    def load_best(self) -> bool:
        """Load the best weights into the models; False when the run kept none."""
        files = self.best_files()
        if not all(f.is_file() for f in files.values()):
            return False
        device = self.parts.device
        where = "cpu" if device.type == "cpu" else str(device)  # safetensors rejects "cpu:0"
        fix = "remove it to use the last weights, or pass force=true to train the run again"
        loaded = {}
        for name, path in files.items():  # every file checked before any is loaded
            state = read_weights(path, where, fix)
            problems = _tensor_dict_problems(state, self.parts.unwrap(name).state_dict())
            if problems:
                raise RunRecordError(f"{path} does not fit the run's model ({'; '.join(problems[:2])}); {fix}")
            loaded[name] = state
        for name, state in loaded.items():
            self.parts.unwrap(name).load_state_dict(state)
        return True

    @staticmethod
    def _load(saved: dict[str, Any], live: dict[str, dict[str, Any]], scaler: Any) -> None:
        for section, objects in live.items():
            for name, obj in objects.items():
                obj.load_state_dict(saved[section][name])
        if saved.get("scaler") is not None and scaler is not None:
            scaler.load_state_dict(saved["scaler"])

    def resume(self, training: bool = True) -> bool:
        """Load the newest usable checkpoint whole; False when there is none.

        Each candidate is read with ``weights_only=True`` and checked completely against the
        live objects before anything is loaded (and, should loading still fail, the state
        before it is put back), so the run continues either from one checkpoint exactly or
        from its fresh initialisation, never from a mix. A file that fails is renamed
        ``*.unusable-<time>`` and the next older one is tried. ``training=False`` (analyses of
        a finished run) restores the models, step and RNG without optimizers and schedules.
        """
        live = self._live(training)
        scaler = self.parts.accelerator.scaler if training else None
        fresh = None  # the state before any load, to go back to when a load fails half-way
        tried = False
        for path in step_checkpoints(self.run_dir):
            tried = True
            try:
                saved = torch.load(path, map_location="cpu", weights_only=True)
                problems = state_problems(
                    saved,
                    live["models"],
                    live["optimizers"] if training else None,
                    live["schedulers"] if training else None,
                    scaler,
                )
            except Exception as exc:  # truncated zip, bad pickle opcode, refused global
                problems = [one_line(exc)]
            if self._everyone(not problems):  # all ranks resume from the same state, or none does
                self.check_same_data(saved, path)
                if fresh is None:
                    fresh = copy.deepcopy(
                        {section: {n: o.state_dict() for n, o in objects.items()} for section, objects in live.items()}
                    )
                try:
                    self._load(saved, live, scaler)
                except Exception as exc:
                    problems = [f"loading failed: {one_line(exc)}"]
                if self._everyone(not problems):
                    restore_rng(rank_rng(saved, self.parts.accelerator.process_index))
                    self.state.step = int(saved["step"])
                    self.state.best = dict(saved["best"])
                    self.state.stopped = saved["stopped"]
                    self.state.running = {k: v.to(self.parts.device) for k, v in saved.get("running", {}).items()}
                    log.info("resumed from %s at step %d", path, self.state.step)
                    return True
                self._load(fresh, live, None)
            aside = set_aside(path) if self.parts.is_main and path.exists() else path
            log.error(
                "checkpoint %s is unusable (%s); set aside as %s, trying an older one",
                path,
                "; ".join(problems[:3]) or "unusable on another rank",
                aside.name,
            )
            self.parts.accelerator.wait_for_everyone()
        if tried:
            log.warning(
                "no usable checkpoint in %s: starting from a fresh initialisation", checkpoint_dir(self.run_dir)
            )
        return False

    def _everyone(self, flag: bool) -> bool:
        """Whether ``flag`` holds on every rank (data parallel: one all-reduce)."""
        if self.parts.world == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.parts.device)
        torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MIN)
        return bool(value.item())
