"""`edge-awares train sft|grpo`: thin click commands. Each builds one config (a recipe file, then the flags given on
the command line), validates it and calls the library. Import-light: torch and TRL load inside the command bodies.

    edge-awares train sft --model BASE --data trajectories.jsonl -o OUT [--config configs/qwen2.5-vl-3b-sft.yaml]
    edge-awares train grpo --model OUT --data DIR -o OUT2
    edge-awares train oracle samples.jsonl -o trajectories.jsonl
"""

from __future__ import annotations

import click

from ..errors import ConfigError


def _common(f):
    """Options shared by both commands. Defaults are None: unset flags leave the recipe's or the config's value."""
    opts = [
        click.option("--config", "recipe", type=click.Path(), help="YAML or JSON recipe (configs/); flags override it."),
        click.option("--model", help="Hugging Face Qwen2.5-VL checkpoint folder."),
        click.option("--data", help="Training data (JSONL, or a folder holding it)."),
        click.option("-o", "--output", help="Output folder: the merged checkpoint; logs in OUTPUT/run/."),
        click.option("--protocol", help="Conversation protocol (default tool_call)."),
        click.option("--crop-set", help="Crop set name (default awares10)."),
        click.option("--val-data", help="Held-out data; else --val-fraction of --data is held out."),
        click.option("--image-root", "image_roots", multiple=True,
                     help="A folder the data's images may also lie in (repeatable), e.g. the curated data folder "
                          "for curate's trajectories. By default every image path must resolve inside the data "
                          "file's folder."),
        click.option("--val-fraction", type=float),
        click.option("--val-samples", type=int, help="Validation questions per evaluation (through Session)."),
        click.option("--eval-metric", help="Validation accuracy metric: anls, exact, relaxed, embedding."),
        click.option("--eval-steps", type=int, help="Evaluate every N steps (0: at the end only)."),
        click.option("--max-new-tokens", type=int,
                     help="Tokens one turn may generate in rollouts and validation (default: the runtime's, 64)."),
        click.option("--lora/--full", "lora", default=None, help="LoRA on the language model (default) or full."),
        click.option("--lora-rank", type=int),
        click.option("--lora-alpha", type=int),
        click.option("--lora-dropout", type=float),
        click.option("--lora-targets", help="Regex over module names (default: language-model projections)."),
        click.option("--epochs", type=float),
        click.option("--max-steps", type=int, help="Stop after N optimizer steps (overrides --epochs)."),
        click.option("--lr", type=float, help="Learning rate."),
        click.option("--batch-size", type=int),
        click.option("--grad-accum", type=int),
        click.option("--warmup-ratio", type=float),
        click.option("--seed", type=int),
        click.option("--precision", help="auto (bf16 on GPU, fp32 on CPU), bf16 or fp32."),
        click.option("--gradient-checkpointing/--no-gradient-checkpointing", "gradient_checkpointing", default=None),
        click.option("--save-strategy", help="Resumable checkpoints: epoch, steps or no."),
        click.option("--save-steps", type=int),
        click.option("--resume", is_flag=True, default=None, help="Continue from the newest checkpoint."),
        click.option("--overwrite", is_flag=True, default=None,
                     help="Replace an existing output of ours (never another folder, never --model)."),
        click.option("--threads", type=int, help="CPU threads for torch (not saved: it changes speed only)."),
    ]
    for opt in reversed(opts):
        f = opt(f)
    return f


def _build(cls, recipe: str | None, flags: dict):
    """Recipe values, then every flag given; a missing model/data/output raises ConfigError."""
    from .config import load_recipe

    values = load_recipe(recipe) if recipe else {}
    values.update({k: v for k, v in flags.items() if v is not None and v != ()})  # (): a repeatable flag unset
    missing = [k for k in ("model", "data", "output") if not values.get(k)]
    if missing:
        raise ConfigError("missing " + ", ".join("--" + m for m in missing))
    return cls.from_dict(values).validate()


def _threads(n: int | None, check_only: bool = False) -> None:
    from ..ranges import check_threads

    check_threads(n)
    if n is not None and not check_only:
        import torch

        torch.set_num_threads(n)


@click.group("train")
def train():
    """Train crop policies: cold-start SFT on trajectories, then multi-turn GRPO (both on TRL)."""


@train.command("sft")
@_common
@click.option("--request-weight", type=float, help="Loss weight of the crop-request turn (default 5).")
@click.option("--max-length", type=int, help="Longest conversation in tokens; longer ones raise.")
def sft(recipe, threads, **flags):
    """Cold-start SFT on whole trajectories; writes a merged Hugging Face checkpoint to -o."""
    from .config import SFTRunConfig

    _threads(threads, check_only=True)
    cfg = _build(SFTRunConfig, recipe, flags)
    _threads(threads)
    from .sft import train_sft

    click.echo(str(train_sft(cfg, log=click.echo)))


@train.command("grpo")
@_common
@click.option("--num-generations", type=int, help="G, rollouts per prompt (default 8).")
@click.option("--prompts-per-step", type=int)
@click.option("--beta", type=float, help="KL coefficient (default 0.05; TRL's own default is 0).")
@click.option("--temperature", type=float)
@click.option("--top-p", type=float)
@click.option("--epsilon", type=float, help="PPO clip range.")
@click.option("--loss-type", help="grpo (default; TRL's own default is dapo), dapo, dr_grpo, bnpo.")
@click.option("--scale-rewards", help="group, batch or none.")
@click.option("--max-completion-length", type=int, help="Completion budget incl. crop image tokens (default: auto).")
@click.option("--max-crop-turns", type=int)
@click.option("--answer-metric", help="R_ans: embedding (default), anls, exact, relaxed.")
@click.option("--alpha-miss", type=float, help="Cost of an HR sample answered without a request (default 2).")
@click.option("--alpha-use", type=float, help="Cost of any request (default 0.25) ...")
@click.option("--area-lambda", type=float, help="... plus this times the requested area (default 0.01).")
@click.option("--area-unit", help="Requested area in percent (default) or fraction of the image.")
@click.option("--vllm", help="Rollouts on TRL's vLLM: off (default), colocate or server (GPU and vllm needed).")
def grpo(recipe, threads, **flags):
    """Multi-turn GRPO with crop rollouts; writes a merged Hugging Face checkpoint to -o."""
    from .config import GRPORunConfig

    _threads(threads, check_only=True)
    cfg = _build(GRPORunConfig, recipe, flags)
    _threads(threads)
    from .grpo import train_grpo

    click.echo(str(train_grpo(cfg, log=click.echo)))


@train.command("oracle")
@click.argument("samples", type=click.Path())
@click.option("-o", "--output", required=True, help="Trajectories JSONL to write.")
@click.option("--image-root", "image_roots", multiple=True,
              help="A folder the samples' images may also lie in (repeatable); by default they must resolve inside "
                   "the SAMPLES file's folder.")
def oracle(samples, output, image_roots):
    """Ground-truth trajectories from annotated SAMPLES (demos, tests): LR if no detail is needed, else HR with the
    annotated crop ids."""
    from .oracle import oracle_trajectories

    click.echo(str(oracle_trajectories(samples, output, image_roots=image_roots)))


@train.command("base")
@click.option("-o", "--output", required=True, help="Output folder: a Hugging Face checkpoint (+ base_run.json).")
@click.option("--steps", type=int, default=4000, show_default=True)
@click.option("--batch-size", type=int, default=16, show_default=True)
@click.option("--lr", type=float, default=1.5e-3, show_default=True)
@click.option("--native-share", type=float, default=0.5, show_default=True,
              help="Share of examples at native resolution (the rest: the low-res view).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--eval-every", type=int, default=500, show_default=True, help="Steps between evaluations (0: none).")
@click.option("--threads", type=int, default=None)
@click.option("--overwrite", is_flag=True, help="Replace a checkpoint of ours at OUTPUT (never any other folder).")
def base(output, steps, batch_size, lr, native_share, seed, eval_every, threads, overwrite):
    """Pretrain a ~3M-parameter Qwen2.5-VL from scratch on card questions (one view, native or low-res)."""
    from .base import BaseRunConfig, train_base

    cfg = BaseRunConfig(output=output, steps=steps, batch_size=batch_size, lr=lr, native_share=native_share,
                        seed=seed, eval_every=eval_every, threads=threads, overwrite=overwrite).validate()
    click.echo(str(train_base(cfg, log=click.echo)))


@train.command("demo")
@click.option("-o", "--output", default="runs/demo", show_default=True, help="Run folder (stages resume).")
@click.option("--task", help="v1 (one card per page: the shipped engine's task, the default) or v2 (2-4 cards, "
              "codes on both sides of the low-res legibility threshold, spanning cards).")
@click.option("--base-steps", type=int, help="Base-model pretraining steps (default: the task's).")
@click.option("--n-train", type=int, help="Training samples (default: the task's, 1500 for v1, 4000 for v2).")
@click.option("--n-test", type=int, help="Held-out samples (default 600).")
@click.option("--grpo-steps", type=int, help="GRPO steps (default 120).")
@click.option("--seed", type=int)
@click.option("--threads", type=int, default=None)
@click.option("--fresh", is_flag=True, default=None,
              help="Delete OUTPUT first (only a demo run folder of ours) instead of resuming its finished stages.")
@click.option("--ship", is_flag=True, default=None,
              help="Copy the policy's int8 engine and the base model's into the package (edge_awares/assets/).")
def demo(output, **flags):
    """The whole demo: base model, data, curation, SFT, GRPO, export, evaluation (and --ship)."""
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(output=output, **{k: v for k, v in flags.items() if v is not None}).validate()
    run_demo(cfg, log=click.echo)
    click.echo(f"run record: {output}/demo_run.json; results: {output}/eval/demo_eval.md")


COMMANDS = [train]
