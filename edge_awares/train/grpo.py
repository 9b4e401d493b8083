"""Multi-turn GRPO for crop policies on TRL's GRPOTrainer: rollouts run TRL's tool-calling loop with an
`environment_factory` whose crop tool cuts crops with the runtime's geometry and returns them as the runtime's
tool turn (images), so rollouts see the prompts and crops a Session would. Reward R = R_ans − C_tool (rewards.py).

    edge-awares train grpo --model SFT_CKPT --data DIR -o OUT
    python: train_grpo(GRPORunConfig(model="SFT_CKPT", data="DIR", output="OUT"))

TRL does the rest: tool-result tokens are masked out of the loss (only sampled tokens train), tool images reach
the training forward pass, the turn cap is `max_tool_calling_iterations`.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from pathlib import Path
from typing import Literal

from ..chat import check_content, encode
from ..crops import ALL, CropSet
from ..data.format import iter_jsonl, read_samples, read_trajectories
from ..errors import BackendUnavailableError, ConfigError, DataError, TrainError
from ..images import load_image, read_image_file
from ..protocols import Parsed, Protocol
from ..protocols.tool_call import TOOL_NAME
from ..session import crop_turn_pieces, stop_token_ids
from ..views import Geometry, View, crop_views, native_view
from .config import GRPORunConfig
from .evaluate import EvalItem
from .render import to_trl
from .rewards import RewardConfig, answer_scores, requested_area, tool_cost

try:
    import torch  # noqa: F401
except ImportError:
    raise BackendUnavailableError("training needs torch, transformers and TRL: pip install 'edge-awares[train]'")


# ----------------------------------------------------------------------------------------------- environment
def make_environment(protocol: Protocol, crop_set: CropSet, geometry: Geometry) -> type:
    """The environment class TRL's `environment_factory` instantiates, one instance per concurrent rollout.

    `reset(**row)` loads the row's original image and returns the runtime's user turn (low-res view + question);
    the `crop` tool parses the call with the runtime's parser, cuts the crops with the runtime's geometry and returns
    the runtime's crop turn. The instance keeps what the rollout fetched, for the reward and the metrics.
    """
    tools = protocol.tools(crop_set)
    if not tools:
        raise TrainError(f"protocol {protocol.name!r} has no tool for TRL's tool-calling loop; use tool_call")
    fn = tools[0]["function"]

    class CropEnvironment:
        """One rollout's state: the original image, its first view, and the crops fetched."""

        def __init__(self):
            self._clear()

        def _clear(self):
            self.image, self.first, self.question = None, None, ""
            self.native_tokens, self.calls, self.parse_failures = 0, 0, 0
            self.fetched: list[View] = []

        def reset(self, **row) -> list[dict]:
            self._clear()
            self.image = load_image(row["image_path"])
            self.question = row["question"]
            self.first = protocol.first_view(self.image, geometry)
            self.native_tokens = native_view(self.image, geometry).n_tokens
            return to_trl(protocol.user_turn(self.first, self.question), images=True)["content"]

        @property
        def visual_tokens(self) -> int:
            return (self.first.n_tokens if self.first else 0) + sum(v.n_tokens for v in self.fetched)

    def crop(self, **arguments) -> list:
        # The call goes back through the protocol's own parser, so names, stray keys and bad ids are handled (and
        # fall back) exactly as the runtime handles them. From our response parser (make_response_parser) the one
        # argument is the turn's raw text; any other arguments (a caller naming regions directly) are rendered with
        # the protocol's own request format first.
        text = arguments.get(RAW_TEXT)
        if not isinstance(text, str):
            regions = arguments.get("regions")
            regions = [str(r) for r in regions] if isinstance(regions, (list, tuple)) else [str(regions or "")]
            text = protocol.request_text(regions, crop_set, self.first, self.image)
        parsed = protocol.parse(text, crop_set)  # "invalid" carries the protocol's fallback crops
        if not parsed.is_request:  # a turn the parser reads as an answer cannot reach a tool call
            parsed = Parsed("invalid", text, crop_ids=list(protocol.fallback_crops))
        self.parse_failures += int(parsed.kind == "invalid")
        views = protocol.crop_views(parsed, self.image, crop_set, geometry, self.first)
        self.calls += 1
        self.fetched += views
        return to_trl(protocol.crop_turn(views, self.question), images=True)["content"]

    # TRL renders an environment method's schema from its signature and docstring (transformers' get_json_schema);
    # both are set so that schema is the protocol's own crop_tool_schema, token for token (tested), while the
    # function itself accepts whatever keys the model wrote and lets the parser judge them.
    region_type = list[Literal[tuple(crop_set.ids)]]
    crop.__name__ = crop.__qualname__ = TOOL_NAME
    crop.__doc__ = f"{fn['description']}\n\nArgs:\n    regions: {fn['parameters']['properties']['regions']['description']}"
    crop.__annotations__ = {"regions": region_type}
    crop.__signature__ = inspect.Signature([
        inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
        inspect.Parameter("regions", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=region_type),
    ])
    setattr(CropEnvironment, TOOL_NAME, crop)
    return CropEnvironment


# ----------------------------------------------------------------------------------------------- the runtime's parser
RAW_TEXT = "text"  # the one argument our response parser hands the crop tool: the turn's text, to parse again


def make_response_parser(protocol: Protocol, crop_set: CropSet, tok, stop_ids) -> callable:
    """`tokenizer.parse_response` for TRL's tool loop, with the session's rules instead of TRL's template parser:
    the sampled ids lose their stop token and are decoded as the session decodes them, and `protocol.parse` decides.
    A request (a valid one, or one that does not parse: the crop tool then fetches the protocol's fallback, the
    whole image, as the session does) becomes one tool call whose argument is the raw text. So TRL never sees a
    second copy of the tool-call format, and an unparseable request is served, not dropped as an empty rollout.

    One case differs from the session, and why: a request turn cut off by the per-turn budget (no stop token). The
    session closes the message and serves it; TRL concatenates token ids and cannot add the closing token, so
    serving it would train on a layout the runtime never produces. Such a turn is not served: the rollout counts
    as requested, with no answer (reward: the request's cost, no answer score)."""
    stop_ids = {int(i) for i in stop_ids}

    def parse_response(ids, prefix=None, tools=None, **_) -> dict:
        ids = [int(i) for i in ids]
        stopped = bool(ids) and ids[-1] in stop_ids
        text = tok.decode(ids[:-1] if stopped else ids)
        message = {"role": "assistant", "content": text}
        if stopped and protocol.parse(text, crop_set).is_request:
            message["tool_calls"] = [{"type": "function", "function": {"name": TOOL_NAME,
                                                                       "arguments": {RAW_TEXT: text}}}]
        return message

    return parse_response


def install_response_parser(tokenizer, parser) -> None:
    """Make TRL (1.x) use `parser`: it calls `tokenizer.parse_response` when a `response_template` is set, and
    otherwise falls back to plain decoding (no tool calls at all). The template string only marks the tokenizer."""
    tokenizer.response_template = "edge-awares: the protocol's own parser (edge_awares.train.grpo)"
    tokenizer.parse_response = parser


# ----------------------------------------------------------------------------------------------- rewards for TRL
def final_answer(completion: list[dict], protocol: Protocol, crop_set: CropSet) -> str:
    """The answer of a TRL completion (its messages), by the session's rule: the last assistant turn's answer text,
    and none when that turn is a request (served or not)."""
    if not completion:
        return ""
    last = completion[-1]
    if last.get("role") != "assistant" or last.get("tool_calls"):
        return ""
    content = last.get("content") or ""
    if isinstance(content, list):
        content = "".join(c.get("text") or "" for c in content if isinstance(c, dict))
    parsed = protocol.parse(content, crop_set)
    return "" if parsed.is_request else protocol.answer_text(content)


def rollout_stats(completion: list[dict], env, protocol: Protocol, crop_set: CropSet) -> dict:
    """What one rollout did, read with the protocol's parser and the environment's own record: requested (the first
    turn is a request, parsed or not), served (a tool turn followed), invalid (the request did not parse: the
    fallback was fetched), cut (a request cut off by the per-turn budget, not served; see make_response_parser),
    dropped (TRL discarded the tool result for overflowing max_completion_length)."""
    first = completion[0] if completion else {}
    text = first.get("content") if isinstance(first.get("content"), str) else ""
    requested = bool(text) and protocol.parse(text, crop_set).is_request
    served = any(m.get("role") == "tool" for m in completion)
    calls = getattr(env, "calls", 0)
    return {"requested": requested or bool(calls), "served": served, "dropped": bool(calls) and not served,
            "invalid": bool(getattr(env, "parse_failures", 0)) if served else False,
            "cut": requested and not first.get("tool_calls")}


def make_reward_funcs(cfg: RewardConfig, protocol: Protocol, crop_set: CropSet):
    """[answer, tool_cost] reward functions in TRL's signature; TRL sums them (weights 1, 1) into R = R_ans − C_tool
    and logs each under rewards/<name>. The tool-cost function also logs the rollout metrics."""
    from ..data.metrics import get_metric

    metric = get_metric(cfg.answer_metric)
    warned = {"dropped": False}

    def answer(prompts, completions, answers=None, **kw):
        preds = [final_answer(c, protocol, crop_set) for c in completions]
        return answer_scores(preds, answers or [[] for _ in preds], metric)

    def tool_cost_reward(prompts, completions, environments=None, hr=None, log_metric=None, **kw):
        environments = environments or [None] * len(completions)
        hr = hr or [None] * len(completions)
        out, stats, rtrs, crops = [], [], [], {}
        for completion, env, label in zip(completions, environments, hr):
            s = rollout_stats(completion, env, protocol, crop_set)
            boxes = [v.box for v in getattr(env, "fetched", [])] if s["served"] else []
            area = requested_area(boxes, env.image.width, env.image.height, cfg.area_unit) if boxes else 0.0
            out.append(-tool_cost(label, s["requested"], area, cfg))
            stats.append(s)
            if env is not None and env.native_tokens:
                served_tokens = env.visual_tokens if s["served"] else env.first.n_tokens
                rtrs.append(served_tokens / env.native_tokens)
                for v in (env.fetched if s["served"] else []):
                    key = v.crop_id if v.crop_id is not None else "box"
                    crops[key] = crops.get(key, 0) + 1
        n = max(1, len(stats))
        dropped = sum(s["dropped"] for s in stats)
        if dropped and not warned["dropped"]:
            warned["dropped"] = True
            warnings.warn(f"{dropped} of {n} rollouts had their crop results dropped by TRL for exceeding "
                          "max_completion_length (crop image tokens count against it); raise it", stacklevel=2)
        if log_metric is not None:
            log_metric("rollout/request_rate", sum(s["requested"] for s in stats) / n)
            log_metric("rollout/dropped_tool_results", dropped / n)
            requests = sum(s["requested"] for s in stats)
            # The same definition as eval's parse_rate: the share of requests that parsed.
            log_metric("rollout/parse_rate", 1.0 - sum(s["invalid"] for s in stats) / requests if requests else 1.0)
            log_metric("rollout/cut_requests", sum(s["cut"] for s in stats) / n)
            if rtrs:
                log_metric("rollout/rtr", sum(rtrs) / len(rtrs))
            for cid, k in sorted(crops.items()):
                log_metric(f"rollout/crops/{cid}", k / n)
        return out

    tool_cost_reward.__name__ = "tool_cost"
    return [answer, tool_cost_reward]


# ----------------------------------------------------------------------------------------------- data
def load_items(path: str | Path, image_roots=()) -> list[EvalItem]:
    """GRPO prompts from samples (HR = needs_detail) or trajectories (HR = label), a JSONL file or a folder
    holding samples.jsonl or trajectories.jsonl; images must lie in its folder or `image_roots`. Raises DataError."""
    p = Path(path)
    if p.is_dir():
        for name in ("samples.jsonl", "trajectories.jsonl"):
            if (p / name).is_file():
                p = p / name
                break
        else:
            raise DataError(f"{path}: no samples.jsonl or trajectories.jsonl inside")
    first = next((obj for _, obj in iter_jsonl(p)), None)
    if first is None:
        raise DataError(f"{p}: empty")
    if isinstance(first, dict) and "label" in first and "messages" in first:
        return [EvalItem(t.id, str(t.image), t.question, tuple(t.answers), t.label == "HR")
                for t in read_trajectories(p, image_roots)]
    return [EvalItem(s.id, str(s.image), s.question, tuple(s.answers), s.needs_detail, s.evidence_box)
            for s in read_samples(p, image_roots)]


def completion_budget(item: EvalItem, protocol: Protocol, crop_set: CropSet, geometry: Geometry, tok,
                      turn_tokens: int, crop_turns: int = 1) -> int:
    """Completion tokens a rollout may need: `crop_turns` requests for the whole image (`all`), each a turn of up to
    `turn_tokens` followed by the crop turn with the native-size crop, then an answer turn of up to `turn_tokens`.
    TRL counts image tokens in max_completion_length and silently drops a tool result that does not fit. Depends on
    the image size only (read from the file header)."""
    return _budget_for_size(_image_size(item.image), protocol, crop_set, geometry, tok, turn_tokens, crop_turns)


def _image_size(path) -> tuple[int, int]:
    """(width, height) as load_image would return them (EXIF rotation applied), without decoding the pixels."""
    import io

    from PIL import Image

    data = read_image_file(path)  # regular files only, byte cap: the same gate as load_image
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            rotated = im.getexif().get(0x0112) in (5, 6, 7, 8)  # orientations that swap the sides
    except Exception:  # noqa: BLE001 (Pillow raises many kinds on a corrupt header)
        return load_image(path).size  # raises the usual one-line ImageError (naming the file)
    return (h, w) if rotated else (w, h)


@functools.lru_cache(maxsize=256)
def _budget_for_size(size, protocol, crop_set, geometry, tok, turn_tokens, crop_turns) -> int:
    from PIL import Image

    image = Image.new("RGB", size)  # geometry depends on the size alone
    views = crop_views(image, crop_set, [ALL], geometry)
    crop_turn = len(encode(crop_turn_pieces(protocol, views, ""), tok))  # the session's own crop-turn layout
    return crop_turns * (turn_tokens + crop_turn) + turn_tokens


def prompt_messages(protocol: Protocol, crop_set: CropSet) -> list[dict]:
    """The dataset prompt: system prompt and an empty user turn that the environment's reset fills with the
    runtime's user turn (low-res view, then the question)."""
    system = protocol.system_prompt(crop_set)
    return ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": ""}]


def build_dataset(items: list[EvalItem], protocol: Protocol, crop_set: CropSet, control_texts=()):
    from datasets import Dataset

    if not items:
        raise DataError("no GRPO prompts")
    for it in items:
        check_content(it.question, control_texts, f"GRPO prompt {it.id!r}")
    prompt = prompt_messages(protocol, crop_set)
    # The original image travels as `image_path`: a column named `image` would make TRL treat it as a prompt image.
    return Dataset.from_list([{"prompt": prompt, "image_path": it.image, "question": it.question,
                               "answers": list(it.answers), "hr": it.hr, "id": it.id} for it in items])


# ----------------------------------------------------------------------------------------------- run
def grpo_args(cfg: GRPORunConfig, placement, max_completion_length: int):
    """TRL's GRPOConfig with the paper's settings made explicit (TRL's defaults differ: loss 'dapo', beta 0)."""
    from trl import GRPOConfig

    from .checkpoint import checkpointing

    return GRPOConfig(
        output_dir=str(cfg.run_dir / "checkpoints"), num_train_epochs=cfg.epochs, max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.num_generations * cfg.prompts_per_step,
        gradient_accumulation_steps=cfg.grad_accum, learning_rate=cfg.lr, warmup_steps=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay, num_generations=cfg.num_generations, beta=cfg.beta,
        temperature=cfg.temperature, top_p=cfg.top_p, epsilon=cfg.epsilon, loss_type=cfg.loss_type,
        scale_rewards=cfg.scale_rewards, max_completion_length=max_completion_length,
        max_tool_calling_iterations=cfg.max_crop_turns, reward_weights=[1.0, 1.0],
        logging_steps=cfg.logging_steps, logging_first_step=True, save_strategy=cfg.save_strategy,
        save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, seed=cfg.seed, data_seed=cfg.seed,
        bf16=placement.bf16, use_cpu=placement.use_cpu, **checkpointing(GRPOConfig, cfg.gradient_checkpointing),
        # Every turn (the request, each answer) gets the session's per-turn budget; TRL's default would give each
        # turn the whole max_completion_length. (vLLM's SamplingParams name it max_tokens.)
        generation_kwargs={"max_tokens" if cfg.vllm != "off" else "max_new_tokens": cfg.turn_tokens},
        **vllm_args(cfg),
        remove_unused_columns=False, report_to="none", log_completions=False,
        dataloader_num_workers=0, disable_tqdm=False,
    )


def vllm_args(cfg: GRPORunConfig) -> dict:
    """TRL's vLLM settings for `cfg.vllm`, refused up front where they cannot work.

    What the session-loop rollouts need from vLLM, and get through TRL 1.16's tool loop: the tool turn's crop images
    as multimodal inputs of the follow-up generation (TRL passes them), the per-turn budget as `max_tokens`, the
    stop at <|im_end|> (the checkpoint's generation config), Qwen2.5-VL's M-RoPE positions computed by vLLM's own
    model (the same 3-D rule as positions.py), and our response parser (installed on the tokenizer, so it applies
    whichever engine generated the ids). Not run here: vLLM needs a CUDA GPU, and CI has none."""
    if cfg.vllm == "off":
        return {"use_vllm": False}
    import importlib.util

    if not torch.cuda.is_available():
        raise ConfigError(f"--vllm {cfg.vllm}: vLLM generation needs a CUDA GPU; none found (use --vllm off)")
    if importlib.util.find_spec("vllm") is None:
        raise ConfigError(f"--vllm {cfg.vllm}: vllm is not installed (pip install vllm, on the GPU machine)")
    return {"use_vllm": True, "vllm_mode": cfg.vllm}


def train_grpo(cfg: GRPORunConfig, log=print, callbacks: list | None = None) -> Path:
    """Run GRPO and write the merged checkpoint to `cfg.output` (logs and checkpoints in `cfg.output/run`).

    Raises ConfigError, DataError, ModelLoadError or TrainError (all one-line CLI errors).
    """
    import os

    from ..tokenizer import TextTokenizer
    from .checkpoint import finish_run, load_policy_model, make_evaluator, start_run
    from .render import make_processor
    from .runlog import RunLog, make_callbacks
    from .sft import split_items

    run = start_run(cfg)
    placement, info, protocol, crop_set, resume_from = run.placement, run.info, run.protocol, run.crop_set, \
        run.resume_from
    geometry = protocol.geometry(info.geometry)
    tok = TextTokenizer.from_file(info.path)
    items = load_items(cfg.data, cfg.image_roots)
    if cfg.val_data:
        train, val = items, load_items(cfg.val_data, cfg.image_roots)
    else:
        train, val = split_items(items, cfg.val_fraction, cfg.seed)
    need = max(completion_budget(it, protocol, crop_set, geometry, tok, cfg.turn_tokens, cfg.max_crop_turns)
               for it in train)
    max_completion = cfg.max_completion_length or need
    if max_completion < need:
        raise TrainError(f"max_completion_length={max_completion} is below the {need} tokens a request for the whole "
                         "image needs on the largest training image (TRL counts crop image tokens in it and silently "
                         "drops tool results that overflow); raise it or leave it unset")
    dataset = build_dataset(train, protocol, crop_set, control_texts=tuple(tok.added_tokens()))
    processor = make_processor(info.path, geometry)
    processor.tokenizer.padding_side = "left"  # GRPO generates from left-padded prompts
    install_response_parser(processor.tokenizer, make_response_parser(protocol, crop_set, tok, stop_token_ids(tok)))

    model, peft_config = load_policy_model(cfg, placement)
    args = grpo_args(cfg, placement, max_completion)
    runlog = RunLog(cfg.run_dir)
    runlog.write_config(cfg, {"placement": placement.__dict__, "n_train": len(train), "n_val": len(val),
                              "max_completion_length": max_completion, "completion_budget_all_crop": need,
                              "geometry": geometry.to_dict(), "protocol": protocol.to_dict(),
                              "reward": cfg.reward_config().__dict__, "trl_args": args.to_dict(),
                              "resume_from": str(resume_from) if resume_from else None})
    runlog.write_versions()
    evaluator = make_evaluator(val[: cfg.val_samples], protocol, crop_set, info.geometry, tok, cfg.eval_metric,
                               cfg.turn_tokens, cfg.max_context)
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is flagged experimental
    from trl import GRPOTrainer

    trainer = GRPOTrainer(
        model=model, reward_funcs=make_reward_funcs(cfg.reward_config(), protocol, crop_set), args=args,
        train_dataset=dataset, processing_class=processor, peft_config=peft_config,
        environment_factory=make_environment(protocol, crop_set, geometry),
        callbacks=make_callbacks(runlog, evaluator, cfg.eval_steps) + list(callbacks or []))
    log(f"GRPO: {len(train)} prompts ({sum(bool(i.hr) for i in train)} HR), {len(val)} held out; G={cfg.num_generations}"
        f", beta={cfg.beta}, loss={cfg.loss_type}; max_completion_length={max_completion}; "
        f"{placement.device} {placement.dtype}")
    return finish_run(trainer, cfg, run, runlog, "grpo")


__all__ = ["make_environment", "make_response_parser", "install_response_parser", "make_reward_funcs", "final_answer",
           "rollout_stats", "load_items",
           "completion_budget", "build_dataset", "prompt_messages", "grpo_args", "train_grpo"]
