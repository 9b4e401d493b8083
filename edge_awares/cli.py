"""The `edge-awares` command line. Thin: each command builds one config, validates it, calls the library.

Every user error (EdgeAwaresError) prints one line and exits non-zero; no traceback.
"""

from __future__ import annotations

import json
import sys
import time

import click

from . import __version__
from .bigckpt import PRESETS as _BIG_PRESETS  # plain data: imports no torch
from .errors import ConfigError, EdgeAwaresError
from .protocols import DEFAULT_PROTOCOL, PROTOCOLS
from .ranges import backend_option, memory_budget_option


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edge-awares")
def cli():
    """Low-resolution first, crops only where it matters: train, export and run crop policies."""


@cli.command()
@click.argument("image")
@click.argument("question")
@click.option("--model", "model", type=click.Path(), help="Hugging Face checkpoint folder (torch reference backend).")
@click.option("--engine", "engine", type=click.Path(), help="Engine directory (torch-free runtime).")
@click.option("--protocol", type=click.Choice(sorted(PROTOCOLS)), default=None,
              help=f"Default: the engine's own protocol; {DEFAULT_PROTOCOL} for --model.")
@click.option("--crops", default="model", show_default=True,
              help="Crop policy: model, none (low-res only), all, or crop ids such as 0,4.")
@click.option("--max-new-tokens", type=int, default=None, help="Per turn (default: the engine's, else 64).")
@click.option("--max-crop-turns", type=int, default=None, help="Default: the engine's, else 1.")
@click.option("--max-context", type=int, default=None, help="KV-cache capacity in tokens (default: the engine's, "
              "else 4096).")
@click.option("--temperature", type=float, default=0.0, show_default=True, help="0 = greedy.")
@click.option("--seed", type=int, default=None)
@click.option("--max-rtr", type=float, default=None,
              help="Budget on the retained-token ratio: requested crops are served in order while they fit.")
@click.option("--provider", default="cpu", show_default=True, help="Execution provider for --engine.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@backend_option
@memory_budget_option
@click.option("--show", "show", type=click.Path(dir_okay=False), default=None,
              help="Write the image with the fetched crops drawn on it (PNG) into an existing folder; never over "
                   "the input, and over an existing file only a PNG of ours.")
def ask(image, question, model, engine, protocol, crops, max_new_tokens, max_crop_turns, max_context,
        temperature, seed, max_rtr, provider, backend, memory_budget, as_json, show):
    """Answer QUESTION about IMAGE: low-res view first, crops only if the policy asks."""
    from .api import AskConfig, ask as run_ask

    cfg = AskConfig(image=image, question=question, model=model, engine=engine, protocol=protocol, crops=crops,
                    max_new_tokens=max_new_tokens, max_crop_turns=max_crop_turns, max_context=max_context,
                    temperature=temperature, seed=seed, provider=provider, memory_budget=memory_budget,
                    backend=backend, max_rtr=max_rtr).validate()
    if show:
        from .outputs import check_file

        check_file(show, "png", inputs=(image, model, engine))  # before the run: never the input image
    from .api import demo_engine

    default = model is None and engine is None
    noise = default and demo_engine() is None
    if noise:
        _warn("no --model or --engine given and this checkout has no demo engine (edge_awares/assets/demo-engine): "
              "using a tiny RANDOM-INIT checkpoint built locally. Its answers are noise; it shows the loop, not a "
              "policy.")
    t0 = time.perf_counter()
    result = run_ask(cfg)
    total_ms = (time.perf_counter() - t0) * 1e3
    out = result.to_dict()
    out.update(model=model, engine=engine if not default or noise else str(demo_engine()), total_ms=total_ms,
               random_weights=noise)
    if show:
        from .images import load_image
        from .outputs import png_info, write_file_atomic
        from .overlay import draw_crops

        drawn = draw_crops(load_image(image), result)
        write_file_atomic(show, lambda f: drawn.save(f, format="PNG", pnginfo=png_info()), "png",
                          inputs=(image, model, engine))
        out["show"] = show
    if as_json:
        click.echo(json.dumps(out))
    else:
        _print_result(out)


@cli.command()
@click.argument("out_dir", type=click.Path())
@click.option("--preset", type=click.Choice(["tiny", "tiny2", "small", "mid", *_BIG_PRESETS]), default="tiny",
              show_default=True, help=f"{', '.join(_BIG_PRESETS)}: the real sizes, streamed (edge_awares.bigckpt).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--text-layers", type=int, default=None, help="Real-size presets: keep only N language-model layers.")
@click.option("--dtype", type=click.Choice(["bfloat16", "float32"]), default="bfloat16", show_default=True,
              help="Real-size presets: the stored dtype.")
@click.option("--force", is_flag=True, help="Replace a checkpoint `tiny` built before (never any other folder).")
def tiny(out_dir, preset, seed, text_layers, dtype, force):
    """Build a random-init Qwen2.5-VL checkpoint (tests, plumbing, and export memory/speed work at the real sizes;
    answers are noise)."""
    from .ranges import SEED, Range

    SEED.check("--seed", seed)
    Range(1, 1024, integer=True, optional=True).check("--text-layers", text_layers)
    if preset in _BIG_PRESETS:
        from .bigckpt import make_big_checkpoint

        click.echo(str(make_big_checkpoint(out_dir, preset=preset, seed=seed, text_layers=text_layers, dtype=dtype,
                                           log=lambda msg: click.echo(msg, err=True), force=force)))
        return
    if text_layers is not None or dtype != "bfloat16":
        raise ConfigError(f"--text-layers and --dtype apply to the real-size presets ({', '.join(_BIG_PRESETS)})")
    from .tiny import make_tiny_checkpoint

    click.echo(str(make_tiny_checkpoint(out_dir, preset=preset, seed=seed, force=force)))


@cli.command("export")
@click.argument("checkpoint", type=click.Path())
@click.option("-o", "--output", required=True, type=click.Path(), help="Engine directory to create.")
@click.option("--format", "formats", default="onnx", show_default=True,
              help="What to write: onnx (onnxruntime), gguf (llama.cpp: language model + mmproj), or onnx,gguf "
                   "(both in one folder; ask/profile/eval pick one with --backend).")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "int8", "int4", "f32", "f16", "q8_0", "q4_K"]),
              default="fp32", show_default=True,
              help="ONNX fp32/fp16/int8/int4; GGUF f32/f16/q8_0/q4_K (Q4_K_M). Either name selects its match in the "
                   "other format (int8 = q8_0, int4 = q4_K).")
@click.option("--protocol", type=click.Choice(sorted(PROTOCOLS)), default=None,
              help="The protocol the policy was trained with (stored in the manifest). Default: from the "
                   f"checkpoint's edge_awares_policy.json, else {DEFAULT_PROTOCOL}.")
@click.option("--vision-precision", type=click.Choice(["fp32", "fp16", "int8", "int8-qdq"]), default=None,
              help="Vision encoder precision (default: as --precision; int8 for int4). int8-qdq: static Q/DQ "
                   "calibrated on --calib-images (the form TensorRT reads).")
@click.option("--calib-images", multiple=True, type=click.Path(),
              help="Images (or folders) for int8-qdq calibration and the acceptance check; repeatable.")
@click.option("--int4-block-size", type=int, default=32, show_default=True)
@click.option("--int4-accuracy-level", type=int, default=4, show_default=True,
              help="MatMulNBits compute type: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8.")
@click.option("--max-context", type=int, default=None, help="Default KV-cache capacity stored in the engine "
              "(default: the runtime's, 4096).")
@click.option("--reference", type=click.Choice(["auto", "resident", "streamed"]), default="auto", show_default=True,
              help="The float32 reference during verification: resident (fast) or streamed module by module "
                   "(one module's memory); auto streams above 2 GiB.")
@click.option("--memory-budget", "memory_budget", type=float, default=None,
              help="GiB the export may use (default: the memory available now); refused above it.")
@click.option("--min-top1", type=float, default=None, help="Acceptance gate: minimum top-1 agreement.")
@click.option("--max-rel-logit-err", type=float, default=None, help="Acceptance gate: maximum relative logit error.")
@click.option("--no-gate", is_flag=True, help="Record a quantized engine's deviation instead of enforcing the gate.")
@click.option("--verify-tokens", type=int, default=12, show_default=True,
              help="Greedy tokens per turn compared against the reference (fewer: a faster check of large models).")
@click.option("--force", is_flag=True, help="Replace an engine this toolkit exported (never any other folder).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest's verification and sizes as JSON.")
def export_cmd(checkpoint, output, formats, precision, protocol, vision_precision, calib_images, int4_block_size,
               int4_accuracy_level, max_context, reference, memory_budget, min_top1, max_rel_logit_err, no_gate,
               verify_tokens, force, as_json):
    """Export CHECKPOINT (a Hugging Face Qwen2.5-VL folder) to a verified engine directory (ONNX and/or GGUF).

    Weights stream from safetensors one tensor at a time; the memory plan is printed first and the export is
    refused if the machine cannot hold it. Quantized engines must pass their acceptance gate."""
    from .export.engine import ExportConfig, expand_images, export_engine
    from .manifest import load_manifest

    cfg = ExportConfig(checkpoint=checkpoint, output=output, precision=precision, protocol=protocol,
                       vision_precision=vision_precision, calib_images=expand_images(calib_images),
                       int4_block_size=int4_block_size, int4_accuracy_level=int4_accuracy_level,
                       max_context=max_context, reference=reference, memory_budget_gb=memory_budget,
                       min_top1=min_top1, max_rel_logit_err=max_rel_logit_err, gate=not no_gate,
                       verify_tokens=verify_tokens, force=force,
                       formats=tuple(f.strip() for f in formats.split(",") if f.strip())).validate()
    log = (lambda msg: click.echo(msg, err=True)) if as_json else click.echo
    path = export_engine(cfg, log=log)
    m = load_manifest(path, check_files=False).data
    if as_json:
        click.echo(json.dumps({"engine": str(path), "sizes": m["sizes"],
                               "backends": {name: {"precision": b["precision"], "verification": b["verification"]}
                                            for name, b in m["backends"].items()}}))
    else:
        click.echo(f"engine written to {path}")


@cli.command("profile")
@click.argument("image")
@click.argument("question")
@click.option("--engine", "engine", type=click.Path(), help="Engine directory (torch-free runtime).")
@click.option("--model", "model", type=click.Path(), help="Hugging Face checkpoint folder (torch reference).")
@click.option("--protocol", type=click.Choice(sorted(PROTOCOLS)), default=None,
              help="Override the engine's protocol (default: the engine's own, or tool_call for --model).")
@click.option("--crops", default="model", show_default=True, help="Crop policy: model, none, all, or ids such as 0,4.")
@click.option("--runs", type=int, default=5, show_default=True)
@click.option("--warmup", type=int, default=1, show_default=True)
@click.option("--max-new-tokens", type=int, default=None, help="Per turn (default: the engine's, else 64).")
@click.option("--max-context", type=int, default=None, help="Default: the engine's, else 4096.")
@click.option("--provider", default="cpu", show_default=True, help="Execution provider: cpu, cuda, tensorrt.")
@click.option("--trace", type=click.Path(), default=None, help="Write a Chrome trace (chrome://tracing, Perfetto) "
              "into an existing folder; replaces only a trace of ours.")
@backend_option
@memory_budget_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object.")
def profile_cmd(image, question, engine, model, protocol, crops, runs, warmup, max_new_tokens, max_context,
                provider, trace, backend, memory_budget, as_json):
    """Time the crop loop on IMAGE/QUESTION: per-turn vision, prefill, decode; RTR; peak memory.

    Without --engine or --model it profiles the shipped demo engine."""
    from .runtimes.profile import ProfileConfig, format_report, profile

    if engine is None and model is None:
        from .api import require_demo_engine

        engine = require_demo_engine()

    cfg = ProfileConfig(image=image, question=question, engine=engine, model=model, protocol=protocol, crops=crops,
                        runs=runs, warmup=warmup, provider=provider, max_new_tokens=max_new_tokens,
                        max_context=max_context, trace=trace, memory_budget=memory_budget,
                        backend=backend).validate()
    report = profile(cfg)
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(format_report(report))
        if trace:
            click.echo(f"trace written to {trace} (open in chrome://tracing or ui.perfetto.dev)")


def _register_subcommands() -> None:
    """Commands that live beside their library code (data, curation, training), each module's COMMANDS list.
    Those modules must stay import-light: heavy libraries load inside the command bodies."""
    import importlib

    for name in ("edge_awares.data.cli", "edge_awares.train.cli", "edge_awares.evaluate", "edge_awares.serve"):
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name != name:
                raise
            continue
        for command in module.COMMANDS:
            cli.add_command(command)


_register_subcommands()


def _fetched(crops: list[str], boxes: list) -> str:
    """What the crop turns fetched, in words no reader takes for "nothing": a bare "0" is crop id 0 (AwaRes's
    top-left quadrant), so every id is named as one and given its region in original-image pixels (the session
    builds both lists from the same fetched views, one box per id)."""
    if not crops:
        return "nothing (answered from the low-res view)"
    return "; ".join(f"{'a free box' if c == 'box' else f'crop id {c}'} at pixels ({', '.join(map(str, b))})"
                     for c, b in zip(crops, boxes))


def _print_result(out: dict) -> None:
    from rich import box
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]Answer:[/bold] {out['answer']!r}")
    con.print(f"[bold]Fetched:[/bold] {_fetched(out['crops'], out['boxes'])}")
    con.print(f"[bold]RTR:[/bold] {out['rtr']:.3f} ({out['visual_tokens']} of {out['native_visual_tokens']} "
              f"native visual tokens); AwaRes-eval pixel ratio {out['pixel_ratio']:.3f}")
    if out.get("max_rtr") is not None:
        dropped = ", ".join(f"crop id {c}" for c in out.get("budget_dropped") or []) or "nothing"
        con.print(f"[bold]Budget:[/bold] RTR at most {out['max_rtr']:g}; left out: {dropped}")
    t = Table(box=box.SIMPLE_HEAD, title="per turn (tokens; times in ms)", title_justify="left")
    for name in ("turn", "kind", "vis tok", "in tok", "out tok", "vision", "prefill", "decode"):
        t.add_column(name, no_wrap=True, justify="left" if name == "kind" else "right")
    for i, turn in enumerate(out["turns"], 1):
        t.add_row(str(i), turn["kind"], str(turn["visual_tokens"]), str(turn["prefill_tokens"]),
                  str(len(turn["generated_ids"])), f"{turn['vision_ms']:.1f}", f"{turn['prefill_ms']:.1f}",
                  f"{turn['decode_ms']:.1f}")
    con.print(t)
    mem = out.get("memory")
    if mem:
        g = 1 << 30
        con.print(f"memory plan: peak {mem['planned_peak'] / g:.2f} GiB (engine {mem['weights'] / g:.2f} GiB, KV cache "
                  f"{mem['kv_cache'] / g:.2f} GiB, largest vision call {mem['vision_peak'] / g:.2f} GiB, and the "
                  f"process), within a {mem['budget'] / g:.1f} GiB budget")
    con.print(f"total {out['total_ms']:.0f} ms (including load)")


def _warn(msg: str) -> None:
    click.echo(click.style("warning: ", fg="yellow", bold=True) + msg, err=True)


def main(argv=None) -> int:
    try:
        cli.main(args=argv, prog_name="edge-awares", standalone_mode=False)
    except EdgeAwaresError as e:
        click.echo(click.style("error: ", fg="red", bold=True) + str(e), err=True)
        return e.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except OSError as e:
        # The last net: a filesystem refusal (full disk, read-only place, a file where a folder should be) that
        # no typed check caught first is still the environment's answer, not a bug; one line, exit 1.
        where = f"{e.filename}: " if e.filename else ""
        click.echo(click.style("error: ", fg="red", bold=True) + f"{where}{e.strerror or e}", err=True)
        return 1
    except MemoryError:
        click.echo(click.style("error: ", fg="red", bold=True) + "out of memory (the request needs more memory than "
                   "this machine has; lower the sizes or use a smaller engine)", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
