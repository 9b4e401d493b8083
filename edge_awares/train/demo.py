"""The shipped demo policy, end to end, in one command: the proof that the whole method runs here.

    edge-awares train demo -o runs/demo [--ship]

Stages (each writes a folder under OUT and is skipped when its output already exists, so a stopped run
resumes; `--fresh` starts over):

1. base/      a small Qwen2.5-VL trained from scratch on card questions from one view (train/base.py; the task's
              preset: ~3M for v1, ~4.6M for v2)
2. data/      card samples of the task (TASKS): train (curation, SFT, GRPO prompts) and a held-out test split
3. curate/    the base model answers each train sample at low-res and native; exact-match judge; ground-truth
              evidence boxes (the generator's) become crop ids; sft_trajectories.jsonl: a share of the HR ones
              rewritten to fetch `all` (the task's all_share)
4. sft/       cold-start SFT on those trajectories (tool_call protocol, full fine-tuning)
5. grpo/      multi-turn GRPO (correctness minus crop cost), validated through the session every few steps
6. engine-fp32/, engine-int8/, engine-int4/   verified ONNX engines of the GRPO policy; engine-base-int8/ the
              base model's (plain protocol: the baselines)
7. eval/      the held-out split through every configuration (benchmarks/bench_demo.py formats the table)
8. --ship     copies engine-int8 into edge_awares/assets/demo-engine (what `ask` uses by default) and
              engine-base-int8 into edge_awares/assets/demo-base-engine (eval's --native and --crops none)

Every stage's settings, seeds, data hashes, timings and metrics land in OUT/demo_run.json.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from ..api import DEMO_BASE_ENGINE as ASSET_BASE_ENGINE
from ..api import DEMO_ENGINE as ASSET_ENGINE
from ..data.cards import DEMO2, CardsConfig
from ..errors import ConfigError
from ..ranges import BATCH, LEARNING_RATE, SEED, STEPS, THREADS, Range, check_ranges


# The demo tasks, each with its pages, its base model and the recipes that are the task's own (the one place
# these defaults live; DemoConfig's None fields take them).
#   v1: one card per page (the shipped engine): whether to crop follows the question, where is the only card.
#   v2: data/cards.DEMO2 (2-4 cards, small and large codes, spanning cards): both decisions depend on the image.
#       The base model is the `demo` preset (3.1M) as in v1, with more dense reading signal (read_share/card_share)
#       and look_weight (base.look_loss: attention supervision of colour binding, which the answer tokens alone did
#       not teach within 9k steps), and small codes are never taught in the low-res view (lowres_small_codes:
#       their bitmap blobs are decodable there, which real small text is not); grounding ("Where is the {colour}
#       card?", answered with the card's crop id: base_where_share) and a per-image-token position loss
#       (base.PositionHeads: base_pos_weight), without which the policy named the right crop on 21% of its requests;
#       a share of the HR trajectories fetch the whole image so the policy has seen every kind of crop turn (centre
#       and halves come from the spanning cards' evidence).
TASKS = {
    "v1": {"cards": {}, "base_preset": "demo", "base_steps": 4000, "base_read_share": 0.1, "base_card_share": 0.3,
           "base_look_weight": 0.0, "base_lowres_small_codes": True, "base_where_share": 0.0, "base_pos_weight": 0.0,
           "all_share": 0.0, "n_train": 1500},
    "v2": {"cards": asdict(DEMO2), "base_preset": "demo", "base_steps": 4500, "base_read_share": 0.25,
           "base_card_share": 0.2, "base_look_weight": 1.0, "base_lowres_small_codes": False, "base_where_share": 0.1,
           "base_pos_weight": 1.0, "all_share": 0.1, "n_train": 4000},
}


@dataclass
class DemoConfig:
    output: str = "runs/demo"
    task: str = "v1"  # the shipped engine's task; v2 is the second demo (issue #13), not yet shipped
    seed: int = 0
    threads: int | None = None
    base_steps: int | None = None  # None: the task's
    base_batch: int = 16
    base_lr: float = 1.5e-3
    n_train: int | None = None  # None: the task's
    n_test: int = 600
    train_seed: int = 2000  # card streams: base pretraining uses 1000/1001, so every split is disjoint
    test_seed: int = 3000
    sft_epochs: float = 2.0
    sft_lr: float = 5e-4
    sft_batch: int = 8
    grpo_steps: int = 120
    grpo_lr: float = 5e-5
    grpo_generations: int = 8
    grpo_prompts_per_step: int = 2
    grpo_eval_steps: int = 20  # validation through the session every N GRPO steps (the curves' accuracy)
    both_wrong: str = "drop"  # curation label when low-res and native answers are both wrong
    all_share: float | None = None  # share of HR trajectories rewritten to fetch `all` (None: the task's)
    eval_limit: int | None = None
    fresh: bool = False
    ship: bool = False

    RANGES = {"base_steps": Range(1, 10**9, integer=True, optional=True), "base_batch": BATCH,
              "base_lr": LEARNING_RATE, "n_train": Range(1, 10**7, integer=True, optional=True),
              "n_test": Range(1, 10**7, integer=True), "seed": SEED, "train_seed": SEED, "test_seed": SEED,
              "sft_epochs": Range(0.0, 1e4, lo_open=True), "sft_lr": LEARNING_RATE, "sft_batch": BATCH,
              "grpo_steps": STEPS, "grpo_lr": LEARNING_RATE, "grpo_generations": Range(2, 1024, integer=True),
              "grpo_prompts_per_step": BATCH, "grpo_eval_steps": Range(0, 10**9, integer=True),
              "all_share": Range(0.0, 1.0, optional=True),
              "eval_limit": Range(1, 10**7, integer=True, optional=True), "threads": THREADS}

    def validate(self) -> "DemoConfig":
        if self.task not in TASKS:
            raise ConfigError(f"unknown demo task {self.task!r}; legal: {', '.join(TASKS)}")
        check_ranges(self, self.RANGES)
        return self

    def recipe(self, key: str):
        """A task setting, unless this config overrides it."""
        own = {"base_steps": self.base_steps, "all_share": self.all_share, "n_train": self.n_train}.get(key)
        return own if own is not None else TASKS[self.task][key]

    @property
    def cards(self) -> CardsConfig:
        return CardsConfig(**TASKS[self.task]["cards"])


def with_whole_image(trajs: list, share: float, seed: int) -> list:
    """`trajs` with a seeded `share` of the HR ones rewritten to fetch the whole image (`all`), the answer kept."""
    import random
    from dataclasses import replace

    from ..crops import ALL
    from ..data.format import make_messages

    hr = [i for i, t in enumerate(trajs) if t.label == "HR"]
    pick = set(random.Random(seed).sample(hr, round(share * len(hr)))) if hr and share > 0 else set()
    out = []
    for i, t in enumerate(trajs):
        if i in pick:
            t = replace(t, crop_ids=[ALL], messages=make_messages(t.question, t.answers[0], [ALL]),
                        meta={**t.meta, "rewritten": "all"})
        out.append(t)
    return out


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


class _Record:
    def __init__(self, cfg: DemoConfig):
        self.path = Path(cfg.output) / "demo_run.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.data["config"] = asdict(cfg)
        self.data.setdefault("stages", {})

    def stage(self, name: str, **info) -> None:
        self.data["stages"][name] = {**self.data["stages"].get(name, {}), **info}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1))


def run_demo(cfg: DemoConfig, log=print) -> dict:
    """Run (or resume) every stage; returns the run record."""
    import torch

    from ..outputs import ensure_marker, prepare_dir, remove_ours

    cfg.validate()
    out = Path(cfg.output)
    prepare_dir(out, "demo", force=True)  # a demo run of ours resumes (or goes, --fresh); other folders are refused
    if cfg.fresh:
        remove_ours(out, "demo")
    out.mkdir(parents=True, exist_ok=True)
    ensure_marker(out, "demo")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rec = _Record(cfg)

    def timed(name, fn):
        t0 = time.perf_counter()
        log(f"== {name}")
        result = fn()
        rec.stage(name, seconds=round(time.perf_counter() - t0, 1))
        return result

    # 1. base model
    base = out / "base"
    if not (base / "base_run.json").is_file():
        from .base import BaseRunConfig, train_base

        remove_ours(base, "checkpoint")  # a stopped base run
        timed("base", lambda: train_base(BaseRunConfig(
            output=str(base), steps=cfg.recipe("base_steps"), batch_size=cfg.base_batch, lr=cfg.base_lr,
            seed=cfg.seed, threads=cfg.threads, preset=cfg.recipe("base_preset"),
            read_share=cfg.recipe("base_read_share"), card_share=cfg.recipe("base_card_share"),
            look_weight=cfg.recipe("base_look_weight"), lowres_small_codes=cfg.recipe("base_lowres_small_codes"),
            where_share=cfg.recipe("base_where_share"), pos_weight=cfg.recipe("base_pos_weight"),
            cards=TASKS[cfg.task]["cards"]), log=log))
    _record_base(rec, base)

    # 2. data
    from ..data.cards import write_cards

    splits = {"train": (cfg.recipe("n_train"), cfg.train_seed), "test": (cfg.n_test, cfg.test_seed)}
    for split, (n, seed) in splits.items():
        path = out / "data" / split / "samples.jsonl"
        if not path.is_file():
            timed(f"data/{split}", lambda: write_cards(path.parent, n=n, seed=seed, cfg=cfg.cards))
            rec.stage(f"data/{split}", n=n, seed=seed, samples_sha256=_sha(path))

    # 3. curation
    cur = out / "curate"
    if not (cur / "report.json").is_file():
        from ..data.curate import CurateConfig, curate

        report = timed("curate", lambda: curate(CurateConfig(
            model=str(base), data=str(out / "data" / "train"), out=str(cur), judge="exact", both_wrong=cfg.both_wrong,
            oracle="gt", max_new_tokens=16), progress=False))
        rec.stage("curate", labels=report["labels"], crop_ids=report["crop_ids"], counts=report["counts"])
    # SFT's trajectories: the curated ones, a share of HR rewritten to fetch the whole image (beside them, so the
    # image paths resolve alike)
    sft_data = cur / "sft_trajectories.jsonl"
    if not sft_data.is_file():
        from ..data.format import read_trajectories, write_trajectories

        trajs = with_whole_image(read_trajectories(cur / "trajectories.jsonl", (str(out / "data" / "train"),)),
                                 cfg.recipe("all_share"), cfg.seed)
        write_trajectories(sft_data, trajs, image_dir=None)
        rec.stage("sft_data", all_share=cfg.recipe("all_share"),
                  crop_ids=dict(sorted(Counter(c for t in trajs for c in t.crop_ids).items())))

    # 4. SFT
    sft = out / "sft"
    if not (sft / "model.safetensors").is_file():
        from .config import SFTRunConfig
        from .sft import train_sft

        remove_ours(sft, "checkpoint")
        timed("sft", lambda: train_sft(SFTRunConfig(
            model=str(base), data=str(sft_data), output=str(sft), lora=False, lr=cfg.sft_lr,
            image_roots=(str(out / "data" / "train"),),  # the trajectories point at the curated data's images
            epochs=cfg.sft_epochs, batch_size=cfg.sft_batch, warmup_ratio=0.05, seed=cfg.seed, save_strategy="no",
            logging_steps=20, val_fraction=0.05, val_samples=64, eval_metric="exact"), log=log))

    # 5. GRPO
    grpo = out / "grpo"
    if not (grpo / "model.safetensors").is_file():
        from .config import GRPORunConfig
        from .grpo import train_grpo

        remove_ours(grpo, "checkpoint")
        timed("grpo", lambda: train_grpo(GRPORunConfig(
            model=str(sft), data=str(out / "data" / "train"), output=str(grpo), lora=False, lr=cfg.grpo_lr,
            max_steps=cfg.grpo_steps, num_generations=cfg.grpo_generations,
            prompts_per_step=cfg.grpo_prompts_per_step, answer_metric="exact", seed=cfg.seed, save_strategy="no",
            logging_steps=10, val_fraction=0.05, val_samples=64, eval_metric="exact",
            eval_steps=cfg.grpo_eval_steps), log=log))

    for name, folder in (("sft", sft), ("grpo", grpo)):  # the last validation through Session, from the run log
        rec.stage(name, metrics=_last_metrics(folder))

    # 6. engines
    from ..export.engine import ExportConfig, export_engine

    calib = [str(p) for p in sorted((out / "data" / "train" / "images").glob("*.png"))[:16]]
    # the policy at three precisions (int8 ships; int4 is reported), and the base model's int8 engine (ships too:
    # the baselines' engine, plain protocol)
    engines = [(f"engine-{p}", grpo, p, None) for p in ("fp32", "int8", "int4")] + [("engine-base-int8", base,
                                                                                    "int8", "plain")]
    for name, ckpt, precision, protocol in engines:
        eng = out / name
        if not (eng / "manifest.json").is_file():
            timed(f"export/{name}", lambda: export_engine(ExportConfig(
                checkpoint=str(ckpt), output=str(eng), precision=precision, calib_images=tuple(calib),
                protocol=protocol, force=True), log=log))
            rec.stage(f"export/{name}", size_bytes=sum(f.stat().st_size for f in eng.rglob("*") if f.is_file()))

    # 7. evaluation
    from .demo_eval import evaluate_demo

    results = timed("eval", lambda: evaluate_demo(out, limit=cfg.eval_limit, log=log))
    rec.stage("eval", results=results)

    # 8. ship
    if cfg.ship:
        ship_engine(out / "engine-int8", ASSET_ENGINE)
        ship_engine(out / "engine-base-int8", ASSET_BASE_ENGINE)
        rec.stage("ship", path=str(ASSET_ENGINE), base_path=str(ASSET_BASE_ENGINE))
        log(f"shipped {out / 'engine-int8'} -> {ASSET_ENGINE}, {out / 'engine-base-int8'} -> {ASSET_BASE_ENGINE}")
    return rec.data


def ship_engine(src: Path, dst: Path) -> None:
    """Copy an engine directory into place whole (built aside, then renamed). `dst` must be new, empty or an
    engine of ours, and not `src` (OutputError); a partial left by a killed copy is removed by the next one."""
    from ..outputs import MARKER, building

    with building(dst, "engine", force=True, inputs=(src,)) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MARKER))


def _record_base(rec: "_Record", base: Path) -> None:
    """The base run's own record (base_run.json): its config, size, final loss and last per-view accuracy."""
    b = json.loads((base / "base_run.json").read_text())
    rec.stage("base", config=b["config"], parameters=b["parameters"], examples_seen=b["examples_seen"],
              train_seconds=b["seconds"], final_loss=round(sum(b["loss"][-100:]) / len(b["loss"][-100:]), 4),
              evals=b["evals"][-1:])


def _last_metrics(run_out: Path) -> dict:
    """The last evaluation the run log recorded (val/ metrics through Session)."""
    log = run_out / "run" / "metrics.jsonl"
    last = {}
    if log.is_file():
        for line in log.read_text().splitlines():
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if any(k.startswith("val/") for k in d):
                last = d
    return last


__all__ = ["DemoConfig", "TASKS", "run_demo", "ship_engine", "with_whole_image", "ASSET_ENGINE", "ASSET_BASE_ENGINE"]
