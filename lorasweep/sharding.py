"""Trials sharded over several devices with FSDP2 (`fsdp_shards: S` in a trial's config).

    lorasweep run --config trial.yaml                 # trial.yaml says fsdp_shards: 2
    lorasweep optimize --workers 2 --devices 0,1,2,3  # a space with fsdp_shards: 2: two GPUs a worker

`run_sharded` starts the trial as S processes (multiprocessing's spawn; a TCP store on 127.0.0.1
that the calling process opens for the rendezvous; gloo on CPUs, NCCL on GPUs with shard k on
cuda:k of the visible devices). Each runs the same trial code (trial.train_trial) with the model
fully sharded (`fully_shard` per decoder layer and the root): each shard holds 1/S of the weights,
gradients and optimizer states, trains batch_size/S rows of every batch (FSDP2 averages the
gradients, so a step is the unsharded step), and evaluates every row (the forward is collective).

The calling process measures the base model once (`prepare`) and passes that to the shards; it
supervises them and talks to Optuna: shard 0 sends it progress, each intermediate evaluation (it
answers go on or stop: pruning), the trained weights when asked (export) and the result, which the
study records as one trial. A shard that dies or fails ends the trial with the reason
(`ShardFailed`, or the shard's own error); the other shards are killed, and each shard dies with
its parent (Linux's parent-death signal), so no process is left behind. Shards ignore SIGINT and
SIGTERM: the calling process handles those and ends them.

Multi-node trials need only another rendezvous: the same shard code under `torchrun --nnodes N`
(its store in place of this one) would shard a trial over machines (README, "Across machines").
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
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
# a shard stuck in a collective (a peer hung, not dead) gives up after this; a dead peer is seen
# by the calling process at once
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


class ShardFailed(RuntimeError):
    """A shard process of a sharded trial died, or the shards ended without a result."""


class Stopped(Exception):
    """The calling process stopped the trial (pruned): a shard ends quietly."""


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
        for layer in decoder_layers(model, self.shards):
            fully_shard(layer, mesh=mesh)
        return fully_shard(model, mesh=mesh)

    def rows(self, batch: torch.Tensor) -> torch.Tensor:
        """This shard's equal part of a batch's rows."""
        return batch.chunk(self.shards)[self.rank]

    def reduce(self, value: float, op: str) -> float:
        """`value` summed ('sum') or maximised ('max') over the shards."""
        tensor = torch.tensor([value], dtype=torch.float64, device=self.collective_device())
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return float(tensor)

    def average(self, tensor: torch.Tensor) -> torch.Tensor:
        """The mean of `tensor` over the shards (each shard's share of the loss)."""
        total = tensor.clone()
        dist.all_reduce(total)
        return total / self.shards

    def collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


def decoder_layers(model: torch.nn.Module, shards: int = 1) -> list[torch.nn.Module]:
    """The model's decoder layers: the classes transformers names as never split across devices."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    names = set(getattr(inner, "_no_split_modules", None) or ())
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ConfigError(
            f"field 'fsdp_shards' is {shards}; allowed: 1 for '{type(inner).__name__}' "
            "(its config names no decoder layer class, _no_split_modules, to shard by)"
        )
    return layers


def run_sharded(
    config: TrialConfig,
    on_step: Callable[[int, int], None] | None = None,
    on_eval: Callable[[int, float, float], None] | None = None,
    cache_dir: Path | None = None,
    on_trained: Callable[[torch.nn.Module, object], None] | None = None,
) -> TrialResult:
    """Run the trial as `config.fsdp_shards` processes and return shard 0's result (module doc)."""
    from lorasweep.prepare import prepare
    from lorasweep.world import default_cache_dir

    _check_devices(config)
    prepared = prepare(config, cache_dir)  # here, once: the shards take the base's own measures
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()  # what the base's measure cached on cuda:0 is shard 0's now
    measured = (prepared.base_metrics, prepared.base_general_rows)
    store = dist.TCPStore("127.0.0.1", 0, None, is_master=True, wait_for_workers=False)
    cache = Path(cache_dir or default_cache_dir())
    cache.mkdir(parents=True, exist_ok=True)
    ctx = mp.get_context("spawn")
    procs, ends = [], []
    with tempfile.TemporaryDirectory(prefix=".shards-", dir=cache) as tmp:
        trained = Path(tmp, "trained.pt") if on_trained is not None else None
        try:
            for rank in range(config.fsdp_shards):
                parent_end, child_end = ctx.Pipe()
                args = (rank, config, store.port, cache_dir, measured, child_end, trained, os.getpid())
                proc = ctx.Process(target=_shard_main, args=args, name=f"lorasweep-shard-{rank}", daemon=True)
                proc.start()
                child_end.close()
                procs.append(proc)
                ends.append(parent_end)
            result = _supervise(config, ends, procs, on_step, on_eval)
            _stop(procs, STOP_WAIT_S)  # they end by themselves once the result is out
        finally:
            _stop(procs, 0)
            for end in ends:
                end.close()
        if trained is not None:  # the shards are gone: their devices are free for this
            _trained_here(prepared, config, on_trained, trained)
    return result


def _supervise(config: TrialConfig, ends: list, procs: list, on_step, on_eval) -> TrialResult:
    """Serve the shards' messages until shard 0's result; a shard's error or death ends the trial."""
    open_ends = {end: rank for rank, end in enumerate(ends)}
    running = {proc.sentinel: rank for rank, proc in enumerate(procs)}

    def serve(end: Connection) -> TrialResult | None:
        """Every message waiting on `end`; shard 0's result if one was among them."""
        while end in open_ends and end.poll():
            try:
                message = end.recv()
            except EOFError:
                del open_ends[end]
                return None
            try:
                result = _serve(message, end, on_step, on_eval)
            except _ShardError as err:
                # a shard that dies breaks the others' collectives: it, not their error, is the reason
                dead = _dead(procs, DEATH_WAIT_S)
                if dead is not None:
                    raise ShardFailed(_died(dead, config, procs)) from err.error
                raise err.error from None
            if result is not None:
                return result
        return None

    while open_ends or running:
        for ready in wait([*open_ends, *running]):
            rank = open_ends.get(ready, running.get(ready))
            result = serve(ends[rank])  # what a shard said comes before how it ended
            if result is not None:
                return result
            if ready in running:
                del running[ready]
                procs[rank].join()
                if procs[rank].exitcode != 0:
                    raise ShardFailed(_died(rank, config, procs))
    raise ShardFailed(f"the {config.fsdp_shards} shards ended without a result")


class _ShardError(Exception):
    """A shard's own error, on its way to the caller."""

    def __init__(self, error: BaseException):
        super().__init__(str(error))
        self.error = error


def _serve(message: tuple, end: Connection, on_step, on_eval) -> TrialResult | None:
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
    elif kind == "error":
        raise _ShardError(body[0])
    elif kind == "result":
        return body[0]
    return None


def _trained_here(prepared, config: TrialConfig, on_trained, path: Path) -> None:
    """`on_trained` in this process, on an unsharded model holding the shards' trained weights."""
    from lorasweep.modeling import trial_model
    from lorasweep.trial import init_batches

    resolved = config.resolved(prepared.train_docs.n_tokens)
    torch.manual_seed(resolved.seed)  # as the shards began: the same initial adapter (PiSSA's residual base)
    model, _ = trial_model(
        prepared.base, resolved, prepared.base_dir, init_batches=init_batches(prepared, resolved)
    )
    unexpected = model.load_state_dict(torch.load(path, weights_only=True), strict=False).unexpected_keys
    if unexpected:
        raise ShardFailed(f"the shards' trained weights do not fit the model: {unexpected[:3]}")
    on_trained(model, prepared)


def _stop(procs: list, wait_s: float) -> None:
    """Every shard ended: given `wait_s` seconds to exit by itself, then killed."""
    for proc in procs:
        proc.join(timeout=wait_s)
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


def _shard_main(
    rank: int,
    config: TrialConfig,
    port: int,
    cache_dir: Path | None,
    measured: tuple,
    end: Connection,
    trained: Path | None,
    parent: int,
) -> None:
    """A shard process: join the group, run the trial's code, send shard 0's messages to the parent."""
    _die_with_parent(parent)
    for sig in (signal.SIGINT, signal.SIGTERM):  # the parent's to handle; it ends the shards
        signal.signal(sig, signal.SIG_IGN)
    from lorasweep.display import quiet_libraries
    from lorasweep.modeling import resolve_device
    from lorasweep.trial import train_trial

    quiet_libraries()
    try:
        device = resolve_device(config.device)
        if device.type == "cuda":
            device = torch.device("cuda", rank)
            torch.cuda.set_device(device)
        store = dist.TCPStore("127.0.0.1", port, None, is_master=False, timeout=COLLECTIVE_TIMEOUT)
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo",
            store=store,
            rank=rank,
            world_size=config.fsdp_shards,
            timeout=COLLECTIVE_TIMEOUT,
            device_id=device if device.type == "cuda" else None,
        )
        shard = Shard(rank, config.fsdp_shards, device)
        result = train_trial(
            config,
            on_step=(lambda s, n: end.send(("step", s, n))) if rank == 0 else None,
            on_eval=lambda step, learn, forget: _decide(shard, end, ("eval", step, learn, forget)),
            cache_dir=cache_dir,
            on_trained=None if trained is None else lambda model, _: _save_trained(shard, model, trained),
            shard=shard,
            measured=measured,
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


def _decide(shard: Shard, end: Connection, message: tuple) -> None:
    """Shard 0 asks the parent whether the trial goes on; every shard hears the answer."""
    stop = torch.zeros(1, device=shard.collective_device())
    if shard.rank == 0:
        end.send(message)
        stop += end.recv() == "stop"
    dist.broadcast(stop, src=0)
    if stop.item():
        raise Stopped


def _save_trained(shard: Shard, model: torch.nn.Module, path: Path) -> None:
    """The trained (trainable) tensors gathered whole, saved by shard 0 for the parent's `on_trained`."""
    trained = {}
    for name, param in model.named_parameters():
        if param.requires_grad:  # every shard takes part in each gather
            whole = param.full_tensor() if hasattr(param, "full_tensor") else param
            if shard.rank == 0:
                trained[name] = whole.detach().cpu()
    if shard.rank == 0:
        torch.save(trained, path)


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
