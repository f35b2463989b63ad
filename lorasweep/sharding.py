"""Trials sharded over several devices with FSDP2 (`fsdp_shards: S` in a trial's config).

    lorasweep run --config trial.yaml                 # trial.yaml says fsdp_shards: 2
    lorasweep optimize --workers 2 --devices 0,1,2,3  # a space with fsdp_shards: 2: two GPUs a worker

`run_sharded` starts the trial as S processes (multiprocessing's spawn, a rendezvous on 127.0.0.1;
gloo on CPUs, NCCL on GPUs with shard k on cuda:k of the visible devices). Each one runs the same
trial code (trial.train_trial) with the model fully sharded (`fully_shard` per decoder layer and
the root): each shard holds 1/S of the weights, gradients and optimizer states, trains batch_size/S
rows of every batch (FSDP2 averages the gradients, so a step is the unsharded step), and evaluates
every row (the forward is collective). The calling process supervises and talks to Optuna: shard 0
sends it progress, each intermediate evaluation (it answers go on or stop: pruning), the trained
weights when asked (export) and the result, which the study records as one trial.

A shard that dies or fails ends the trial with the reason (`ShardFailed`, or the shard's own error);
the other shards are stopped, and each shard dies with its parent, so no process is left behind.

Multi-node trials need only another rendezvous: the same code under `torchrun --nnodes N` (its
environment variables in place of the 127.0.0.1 address) would shard a trial over machines.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from multiprocessing.connection import Connection, wait
from pathlib import Path

import torch
import torch.distributed as dist

from lorasweep.config import TrialConfig
from lorasweep.records import TrialResult
from lorasweep.validation import ConfigError

STOP_WAIT_S = 10  # for the shards to end after the trial, before they are killed
DEATH_WAIT_S = 2  # after a shard's error, for a dead shard that caused it to be seen
COLLECTIVE_TIMEOUT = timedelta(minutes=30)  # the supervisor ends a hung shard long before


class ShardFailed(RuntimeError):
    """A shard process of a sharded trial died."""


class ShardError(Exception):
    """A shard's own error, on its way to the caller (`error`)."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


class Stopped(Exception):
    """The supervisor stopped the trial (pruned, interrupted): a shard ends quietly."""


@dataclass(frozen=True)
class Shard:
    """This process's place in a sharded trial."""

    rank: int
    shards: int
    device: torch.device

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model fully sharded over the shards (FSDP2), each decoder layer its own unit."""
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(self.device.type, (self.shards,))
        for layer in decoder_layers(model):
            fully_shard(layer, mesh=mesh)
        return fully_shard(model, mesh=mesh)

    def rows(self, batch: torch.Tensor) -> torch.Tensor:
        """This shard's equal part of a batch's rows."""
        return batch.chunk(self.shards)[self.rank]


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's decoder layers: the classes transformers names as never split across devices."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(inner, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(f"fsdp_shards: cannot find the decoder layers of '{type(inner).__name__}'")
    return layers


def across(value: float, op: str) -> float:
    """`value` reduced over a sharded trial's shards ('sum' or 'max'); itself in a plain trial."""
    if not dist.is_initialized():
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return float(tensor)


def _collective_device() -> torch.device:
    return (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend() == "nccl"
        else torch.device("cpu")
    )


def run_sharded(
    config: TrialConfig,
    on_step: Callable[[int, int], None] | None = None,
    on_eval: Callable[[int, float, float], None] | None = None,
    cache_dir: Path | None = None,
    on_trained: Callable[[torch.nn.Module, object], None] | None = None,
) -> TrialResult:
    """Run the trial as `config.fsdp_shards` processes and return shard 0's result (module doc)."""
    _check_devices(config)
    ctx = mp.get_context("spawn")
    port = _free_port()
    ends: list[Connection] = []
    procs = []
    result = None
    with tempfile.TemporaryDirectory(prefix="lorasweep-shards-") as tmp:
        trained = Path(tmp) if on_trained is not None else None
        try:
            for rank in range(config.fsdp_shards):
                parent_end, child_end = ctx.Pipe()
                proc = ctx.Process(
                    target=_shard_main,
                    args=(rank, config, port, cache_dir, child_end, trained, os.getpid()),
                    name=f"lorasweep-shard-{rank}",
                    daemon=True,
                )
                proc.start()
                child_end.close()
                ends.append(parent_end)
                procs.append(proc)
            result = _supervise(config, ends, procs, on_step, on_eval, on_trained, cache_dir)
            return result
        finally:
            # after the result the shards end by themselves; otherwise one may wait in a collective
            _stop(procs, STOP_WAIT_S if result is not None else 0)
            for end in ends:
                end.close()


def _supervise(config, ends, procs, on_step, on_eval, on_trained, cache_dir) -> TrialResult:
    """Serve shard 0's messages until its result; a shard's error or death ends the trial."""
    sentinels = {proc.sentinel: rank for rank, proc in enumerate(procs)}
    watched = [*ends, *sentinels]

    def serve(end: Connection) -> TrialResult | None:
        return _serve(end.recv(), end, config, on_step, on_eval, on_trained, cache_dir)

    while True:
        for ready in wait(watched):
            try:
                if ready in sentinels:
                    rank = sentinels[ready]
                    while ends[rank] in watched and ends[rank].poll():  # what it said before it ended
                        serve(ends[rank])
                    watched.remove(ready)
                    procs[rank].join()
                    if procs[rank].exitcode != 0:
                        raise ShardFailed(_died(rank, config, procs))
                    continue
                try:
                    result = serve(ready)
                except EOFError:  # the process is ending: its sentinel says how
                    watched.remove(ready)
                    continue
            except ShardError as err:
                # a shard that dies breaks the others' collectives: it, not their error, is the reason
                dead = _dead(procs, DEATH_WAIT_S)
                if dead is not None:
                    raise ShardFailed(_died(dead, config, procs)) from err.error
                raise err.error from None
            if result is not None:
                return result


def _serve(message, end, config, on_step, on_eval, on_trained, cache_dir) -> TrialResult | None:
    kind, *body = message
    if kind == "step" and on_step is not None:
        on_step(*body)
    elif kind == "eval":
        try:
            if on_eval is not None:
                on_eval(*body)
        except BaseException:
            end.send("stop")
            raise
        end.send("go")
    elif kind == "trained":
        _trained_here(config, cache_dir, on_trained, *body)
        end.send("go")
    elif kind == "error":
        raise ShardError(body[0])
    elif kind == "result":
        return body[0]
    return None


def _trained_here(config: TrialConfig, cache_dir, on_trained, path: str) -> None:
    """`on_trained` in this process, on an unsharded model holding the shards' trained weights."""
    from lorasweep.modeling import trial_model
    from lorasweep.prepare import prepare

    prepared = prepare(config, cache_dir)
    resolved = config.resolved(prepared.train_docs.n_tokens)
    model, _ = trial_model(prepared.base, resolved, prepared.base_dir)
    missing = model.load_state_dict(torch.load(path, weights_only=True), strict=False).unexpected_keys
    if missing:
        raise ShardFailed(f"the shards' trained weights do not fit the model: {missing[:3]}")
    on_trained(model, prepared)


def _stop(procs: list, wait_s: float) -> None:
    """End every shard: given `wait_s` to exit by itself, then SIGTERM, then SIGKILL."""
    for proc in procs:
        proc.join(timeout=wait_s)
    for proc in procs:
        if proc.is_alive():
            proc.terminate()
    for proc in procs:
        proc.join(timeout=STOP_WAIT_S)
        if proc.is_alive():
            proc.kill()
            proc.join()


def _dead(procs: list, within_s: float) -> int | None:
    """The first shard found dead (ended other than by returning) within `within_s`, if any."""
    wait([proc.sentinel for proc in procs], timeout=within_s)
    for rank, proc in enumerate(procs):
        proc.join(timeout=0)
        if proc.exitcode not in (None, 0):
            return rank
    return None


def _died(rank: int, config: TrialConfig, procs: list) -> str:
    code = procs[rank].exitcode
    how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with code {code}"
    return f"shard {rank} of {config.fsdp_shards} {how} during the trial"


def _check_devices(config: TrialConfig) -> None:
    from lorasweep.modeling import resolve_device

    device = resolve_device(config.device)
    if device.type == "cuda" and torch.cuda.device_count() < config.fsdp_shards:
        raise ConfigError(
            f"field 'fsdp_shards' is {config.fsdp_shards}; this process sees {torch.cuda.device_count()} "
            "GPU(s) (allowed: at most that many; give each worker enough with --devices)"
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shard_main(
    rank: int,
    config: TrialConfig,
    port: int,
    cache_dir: Path | None,
    end: Connection,
    trained: Path | None,
    parent: int,
) -> None:
    """A shard process: join the group, run the trial's code, send shard 0's messages to the parent."""
    _die_with_parent(parent)
    from lorasweep.display import quiet_libraries
    from lorasweep.modeling import resolve_device
    from lorasweep.trial import train_trial

    quiet_libraries()
    try:
        device = resolve_device(config.device)
        if device.type == "cuda":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=config.fsdp_shards,
            timeout=COLLECTIVE_TIMEOUT,
            device_id=device if device.type == "cuda" else None,
        )
        shard = Shard(rank, config.fsdp_shards, device)
        result = train_trial(
            config,
            on_step=(lambda s, n: end.send(("step", s, n))) if rank == 0 else None,
            on_eval=lambda step, learn, forget: _decide(end, rank, ("eval", step, learn, forget)),
            cache_dir=cache_dir,
            on_trained=None if trained is None else lambda model, _: _send_trained(model, end, rank, trained),
            shard=shard,
        )
        if rank == 0:
            end.send(("result", result))
    except Stopped:
        pass
    except BaseException as err:  # noqa: BLE001 - the parent raises it: a config error stays one
        end.send(("error", _picklable(err)))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
        end.close()


def _decide(end: Connection, rank: int, message: tuple) -> None:
    """Shard 0 asks the parent whether the trial goes on; every shard hears the answer."""
    stop = torch.zeros(1, device=_collective_device())
    if rank == 0:
        end.send(message)
        stop += end.recv() == "stop"
    dist.broadcast(stop, src=0)
    if stop.item():
        raise Stopped


def _send_trained(model: torch.nn.Module, end: Connection, rank: int, folder: Path) -> None:
    """The trained weights gathered whole on shard 0, saved for the parent's `on_trained`."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    if rank == 0:
        path = folder / "trained.pt"
        torch.save({k: v for k, v in full.items() if k in trainable}, path)
        end.send(("trained", str(path)))
        end.recv()
    dist.barrier()


def _picklable(err: BaseException) -> BaseException:
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except (pickle.PicklingError, TypeError, AttributeError):
        return RuntimeError(f"{type(err).__name__}: {err}")


def _die_with_parent(parent: int) -> None:
    """The kernel kills this process when its parent dies (Linux), so a killed worker leaves none."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:  # the parent died before the call
        os._exit(1)
