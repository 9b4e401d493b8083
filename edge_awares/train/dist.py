"""Training under `accelerate launch`: several processes, one output folder.

    accelerate launch --config_file configs/accelerate/ddp.yaml   -m edge_awares.cli train sft ...
    accelerate launch --config_file configs/accelerate/fsdp.yaml  -m edge_awares.cli train grpo ...   (7B)
    accelerate launch --config_file configs/accelerate/zero3.yaml -m edge_awares.cli train grpo ...   (7B)

The Trainer (transformers, through TRL) shards the data, averages the gradients and logs from rank 0 on its own;
what it cannot know is which of our side effects must happen once. The rule here: rank 0 owns the output folder
(checks, markers, run log, validation through the session, the merged model); every other rank reads what rank 0
decided. A single process (no WORLD_SIZE, or 1) takes none of these paths: every function here is then a no-op
or a direct call.
"""

from __future__ import annotations

import os

from .. import errors


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main() -> bool:
    """Rank 0 of a launched run, or the only process."""
    return int(os.environ.get("RANK", "0") or 0) == 0


def launched() -> bool:
    return world_size() > 1


def start(use_cpu: bool) -> None:
    """Join the process group now (gloo on CPU, NCCL on GPU), before the first step that needs a barrier; the
    Trainer's Accelerator later finds the same shared state."""
    if launched():
        from accelerate import PartialState

        PartialState(cpu=use_cpu)


def barrier() -> None:
    if launched():
        from accelerate import PartialState

        PartialState().wait_for_everyone()


def on_main(fn):
    """`fn()` on rank 0 only; every rank returns its result (a str or None) or raises its edge-awares error, so a
    refused output folder stops all ranks with the same one-line message instead of leaving them at a barrier."""
    if not launched():
        return fn()
    import torch.distributed as dist

    box = [None]
    if is_main():
        try:
            value = fn()
            box = [("ok", None if value is None else str(value), "")]
        except errors.EdgeAwaresError as e:
            box = [("error", type(e).__name__, str(e))]
    dist.broadcast_object_list(box, src=0)  # plain strings between our own processes
    kind, a, b = box[0]
    if kind == "error":
        cls = getattr(errors, a, errors.EdgeAwaresError)
        try:
            e = cls(b)
        except TypeError:  # an error class with its own constructor: the message still travels
            e = errors.EdgeAwaresError(b)
        raise e
    return a


def sharded() -> bool:
    """Whether the model's parameters are sharded across ranks (FSDP or DeepSpeed ZeRO-3): then no rank holds the
    whole model between steps, and the in-training session validation is skipped (evaluate the saved model with
    `edge-awares eval` instead)."""
    if not launched():
        return False
    from accelerate.state import AcceleratorState, DistributedType

    state = AcceleratorState()
    if state.distributed_type == DistributedType.FSDP:
        return True
    if state.distributed_type == DistributedType.DEEPSPEED:
        plugin = state.deepspeed_plugin
        return bool(plugin) and plugin.zero_stage == 3
    return False


__all__ = ["world_size", "is_main", "launched", "start", "barrier", "on_main", "sharded"]
