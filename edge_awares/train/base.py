"""Pretraining a base model from scratch: the role Qwen2.5-VL plays in the paper, at a size a CPU can train.

No pretrained weights can be downloaded here, so the demo's base model starts from random init (the `demo`
preset of edge_awares.tiny: a ~3M-parameter Qwen2.5-VL with a tokenizer trained on the task's text) and learns
to answer card questions (data/cards.py) from ONE view: native resolution or the low-res view, mixed. Like the
paper's base model it then reads small text at native resolution but not in the low-res view, which is what
curation measures.

Examples are rendered with the runtime's own code (protocol user turn, chat renderer, numpy patches), so the
model is trained on exactly the token layout `Session.run(view=...)` feeds it. This is a plain PyTorch loop,
not TRL's SFTTrainer: samples are generated on the fly (an endless stream, no dataset to materialise) and the
per-step cost of TRL's processor round trip would dominate at this model size.

What made a from-scratch model read within the CPU budget (measured, see the issue #6 note): M-RoPE positions
(`mm_token_type_ids`, see Encoder.batch), a curriculum (single-card crops at native resolution first, then
pages), and an auxiliary per-token loss on the vision tower (AuxHeads).

    edge-awares train base -o OUT [--steps 4000]
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..chat import IM_END, conversation_pieces, encode
from ..crops import AWARES_CROPS
from ..data.cards import (COLOUR_NAMES, LETTERS, READ_QUESTION, WHERE_QUESTION, CardsConfig, card_slot,
                          make_card_sample)
from ..errors import ConfigError
from ..models import load_pretrained
from ..ranges import BATCH, COUNT, FRACTION, LEARNING_RATE, SEED, STEPS, THREADS, Range, check_ranges
from ..protocols import get_protocol
from ..views import crop_views, native_view

try:
    import torch
except ImportError:  # pragma: no cover - the CLI names the extra
    from ..errors import BackendUnavailableError

    raise BackendUnavailableError("training needs torch and transformers: pip install 'edge-awares[train]'")


@dataclass
class BaseRunConfig:
    output: str
    steps: int = 6000
    batch_size: int = 16
    lr: float = 1.5e-3
    min_lr_ratio: float = 0.05
    warmup: int = 200
    weight_decay: float = 0.05
    native_share: float = 0.5  # share of examples shown at native resolution (the rest: the low-res view)
    read_share: float = 0.1  # share of "Read the cards." examples (every card: a dense reading signal)
    card_share: float = 0.3  # share of single-card examples: the question's card cut out as the crop turn shows it
    aux_weight: float = 1.0  # weight of the vision tower's per-token card-attribute loss (0: off)
    look_weight: float = 0.0  # weight of the "look at the named card" attention loss (look_loss; 0: off)
    where_share: float = 0.0  # share of "Where is the {colour} card?" examples (grounding; answer: the card's slot)
    pos_weight: float = 0.0  # weight of the language model's per-image-token position loss (PositionHeads; 0: off)
    pos_layer: int = 2  # the decoder layer whose output PositionHeads reads (hidden_states index: 0 = embeddings)
    # False: an example whose answer holds a small code (the question's, or any card's for READ_QUESTION) is shown at
    # native resolution even when its view draw says low-res. Why: the small codes are one fixed bitmap font, so in
    # the low-res view each digit is still a distinct 3x5-px blob that a model can learn to decode (measured: the v2
    # base read 87% of codes at low res after 4k steps, most of them small), which natural text at that size does
    # not allow and a pretrained VLM never learns; the paper's premise is a base model that cannot read them there.
    lowres_small_codes: bool = True
    card_steps: int = 1500  # curriculum: the first steps show single cards only (reading before finding)
    preset: str = "demo"
    seed: int = 0
    data_seed: int = 1000  # card stream the examples are drawn from (evaluation uses other seeds)
    eval_every: int = 500
    eval_n: int = 96
    threads: int | None = None
    cards: dict = field(default_factory=dict)  # CardsConfig overrides
    overwrite: bool = False  # replace an existing checkpoint of ours at `output` (never any other folder)

    RANGES = {"steps": STEPS, "batch_size": BATCH, "lr": LEARNING_RATE, "min_lr_ratio": FRACTION,
              "warmup": COUNT, "weight_decay": Range(0.0, 10.0), "native_share": FRACTION, "read_share": FRACTION,
              "card_share": FRACTION, "aux_weight": Range(0.0, 100.0), "look_weight": Range(0.0, 100.0),
              "where_share": FRACTION, "pos_weight": Range(0.0, 100.0), "pos_layer": Range(1, 1000, integer=True),
              "card_steps": COUNT, "seed": SEED,
              "data_seed": SEED, "eval_every": COUNT, "eval_n": Range(1, 10**6, integer=True), "threads": THREADS}

    def validate(self) -> "BaseRunConfig":
        check_ranges(self, self.RANGES)
        if self.read_share + self.card_share + self.where_share > 1.0:
            raise ConfigError("read_share, card_share and where_share must sum to at most 1")
        if self.card_steps > 0 and self.card_share <= 0:
            raise ConfigError("card_steps needs card_share > 0")
        CardsConfig(**self.cards).validate()
        return self


def tokenizer_corpus(cfg: CardsConfig, n: int = 400, seed: int = 99) -> list[str]:
    """Questions and answers of the card task, for the tokenizer (the digits split one per token anyway)."""
    from ..data.cards import iter_card_samples

    return [f"{s.question} {s.answers[0]} {READ_QUESTION} {s.meta['reading']}" for s in iter_card_samples(n, seed, cfg)]


class Encoder:
    """Card samples to model inputs through the runtime's own protocol, chat renderer and patch code."""

    def __init__(self, model_dir: Path, protocol: str = "plain"):
        from ..models import read_checkpoint
        from ..tokenizer import TextTokenizer

        info = read_checkpoint(model_dir)
        self.tok = TextTokenizer.from_file(info.path)
        self.protocol = get_protocol(protocol)
        self.geometry = self.protocol.geometry(info.geometry)
        self.im_end = self.tok.token_id(IM_END)
        self.pad = self.tok.token_id("<|endoftext|>")
        self.image_pad = self.tok.token_id("<|image_pad|>")

    def example(self, image, question: str, answer: str, view: str, crop_id: str | None = None,
                cards: list | None = None, look: str | None = None) -> dict:
        """One example from one view of `image`: native, lowres, or (with `crop_id`) the crop of that id cut
        from the original image, as the runtime's crop turn shows it (at native density, or halved for lowres)."""
        p, g = self.protocol, self.geometry
        crop_box, page = None, image
        if crop_id is not None:
            crop = crop_views(image, AWARES_CROPS, [crop_id], g)[0]
            image, crop_box = crop.source, crop.box
        first = native_view(image, g) if view == "native" else p.first_view(image, g)
        pieces = conversation_pieces(p.system_prompt(AWARES_CROPS), p.tools(AWARES_CROPS), [p.user_turn(first, question)])
        prompt = encode(pieces, self.tok).ids.tolist()
        target = self.tok.encode(answer) + [self.im_end]
        out = {"ids": prompt + target, "labels": [-100] * len(prompt) + target,
               "pixels": first.pixel_values(), "thw": first.grid_thw, "pos": grid_cells(first.merged_hw)}
        if cards is not None:
            out["aux"] = token_attributes(cards, first.merged_hw, page.size, crop_box, legible=view == "native")
            if look is not None:  # look_loss's targets: the question's colour word, the card of that colour
                start = prompt.index(self.image_pad)
                keys = start + np.flatnonzero(out["aux"][:, 0] == COLOUR_NAMES.index(look))
                word = self.tok.encode(" " + look)
                at = max(i for i in range(len(prompt) - len(word) + 1) if prompt[i:i + len(word)] == word)
                out["look"] = (list(range(len(prompt) - 1, len(out["ids"]) - 1)), keys.tolist(),
                               list(range(at, at + len(word))))
        return out

    def batch(self, examples: list[dict]) -> dict:
        n = max(len(e["ids"]) for e in examples)
        ids = torch.full((len(examples), n), self.pad, dtype=torch.long)
        labels = torch.full((len(examples), n), -100, dtype=torch.long)
        mask = torch.zeros((len(examples), n), dtype=torch.long)
        for i, e in enumerate(examples):
            k = len(e["ids"])
            ids[i, :k] = torch.tensor(e["ids"])
            labels[i, :k] = torch.tensor(e["labels"])
            mask[i, :k] = 1
        # transformers (5.x) computes Qwen2.5-VL's M-RoPE positions only when told which tokens are image tokens;
        # without `mm_token_type_ids` it silently falls back to 1-D text positions, and a model trained so reads
        # badly under the runtime's (correct) 3-D positions.
        out = {"input_ids": ids, "labels": labels, "attention_mask": mask,
               "mm_token_type_ids": (ids == self.image_pad).int(),
               "pixel_values": torch.from_numpy(np.concatenate([e["pixels"] for e in examples])),
               "image_grid_thw": torch.tensor([e["thw"] for e in examples], dtype=torch.long)}
        if all("aux" in e for e in examples):
            out["aux"] = torch.from_numpy(np.concatenate([e["aux"] for e in examples]))
        out["pos"] = torch.from_numpy(np.concatenate([e["pos"] for e in examples]))
        if any(e.get("look") for e in examples):
            # [2, B, n, n]: where query row i should look at key column j: [0] the colour word, [1] the card
            look = torch.zeros((2, len(examples), n, n), dtype=torch.bool)
            for i, e in enumerate(examples):
                if e.get("look"):
                    rows, card, word = (torch.tensor(x) for x in e["look"])
                    look[0, i, rows[:, None], word[None, :]] = True
                    look[1, i, rows[:, None], card[None, :]] = True
            out["look"] = look
        return out


def token_attributes(cards: list, merged_hw: tuple[int, int], page_size: tuple[int, int],
                     crop_box: tuple[int, int, int, int] | None, legible: bool) -> np.ndarray:
    """Per visual token, the targets of the auxiliary vision loss (see `AuxHeads`), int64 [n_tokens, 3]:
    [colour, letter, digit]. Colour and letter: those of the card under the token's centre (-100 on blank paper).
    Digit: the code digit whose glyph centre lies in the token, 10 for none, -100 where the view cannot show it
    (a small code in the low-res view; a large code is legible there). `cards` is a card sample's meta["cards"]
    (rows [slot, colour, letter, code, code box, card box, large]; the first demo's 5-item rows have no card box
    and no large codes: each card is its quadrant); `crop_box` the pixel box the view shows (None: the page)."""
    h, w = merged_hw
    pw, ph = page_size
    x0, y0, x1, y1 = crop_box or (0, 0, pw, ph)
    sx, sy = (x1 - x0) / w, (y1 - y0) / h  # page pixels per token
    boxes, large = [], []
    for row in cards:
        if len(row) >= 7:
            boxes.append(tuple(row[5]))
            large.append(bool(row[6]))
        else:
            q = int(row[0])
            boxes.append(((q % 2) * pw // 2, (q // 2) * ph // 2, (q % 2 + 1) * pw // 2, (q // 2 + 1) * ph // 2))
            large.append(False)
    digit = np.full((h, w), 10 if legible else -100, dtype=np.int64)
    for row, big in zip(cards, large):
        if not (legible or big):
            continue
        code, (bx0, by0, bx1, by1) = row[3], row[4]
        step = (bx1 - bx0) / len(code)
        for k, d in enumerate(code):
            r, c = int(((by0 + by1) / 2 - y0) // sy), int((bx0 + (k + 0.5) * step - x0) // sx)
            if 0 <= r < h and 0 <= c < w:
                digit[r, c] = int(d)
    rows = []
    for r in range(h):
        for c in range(w):
            px, py = x0 + (c + 0.5) * sx, y0 + (r + 0.5) * sy
            i = next((i for i, (a, b, e, f) in enumerate(boxes) if a <= px < e and b <= py < f), None)
            if i is None:
                rows.append([-100, -100, digit[r, c]])
            else:
                rows.append([COLOUR_NAMES.index(cards[i][1]), LETTERS.index(cards[i][2]), digit[r, c]])
    return np.asarray(rows, dtype=np.int64)


def grid_cells(merged_hw: tuple[int, int], n: int = 4) -> np.ndarray:
    """Per visual token (row-major, as the prompt holds them), its cell of an n x n grid over the view, int64
    [n_tokens, 2]: [row cell, column cell]. PositionHeads' targets."""
    h, w = merged_hw
    r, c = np.divmod(np.arange(h * w), w)
    return np.stack([r * n // h, c * n // w], axis=1).astype(np.int64)


class PositionHeads(torch.nn.Module):
    """Linear read-outs of each image token's place in the view (row and column cell of a 4 x 4 grid) from the
    language model's hidden state after `pos_layer` decoder layers.

    Why: a crop request names *where* the evidence is, so the tokens the request attends to must carry their own
    position. Nothing puts it there by itself: Qwen2.5-VL's vision tower has only relative 2-D RoPE (no absolute
    position embedding) and the language model's M-RoPE acts on query-key scores only, never on the values an
    attention read returns; the answer to "which card" carries content, not place (measured: the v2 SFT policy,
    trained without this, named the right crop on 21% of its requests, its ids collapsed onto one quadrant). The
    language model can derive a token's absolute place (its M-RoPE offset to the text before the image is
    absolute), and this dense target makes it do so early. Dropped after pretraining, like AuxHeads."""

    def __init__(self, hidden: int, cells: int = 4):
        super().__init__()
        self.row = torch.nn.Linear(hidden, cells)
        self.col = torch.nn.Linear(hidden, cells)

    def loss(self, feats: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        ce = torch.nn.functional.cross_entropy
        return ce(self.row(feats), target[:, 0]) + ce(self.col(feats), target[:, 1])


class AuxHeads(torch.nn.Module):
    """Linear read-outs of card attributes from each merged visual token (colour, letter, code digits).

    Why: trained from scratch, the language model's only signal is a few answer tokens per image, and the vision
    tower learns to read very slowly through that bottleneck (measured: chance accuracy after 16k examples).
    A dense per-token target teaches the tower to put each card's attributes into its tokens; the heads are
    dropped after pretraining (the saved checkpoint is a plain Qwen2.5-VL)."""

    def __init__(self, hidden: int):
        super().__init__()
        self.colour = torch.nn.Linear(hidden, len(COLOUR_NAMES))
        self.letter = torch.nn.Linear(hidden, len(LETTERS))
        self.digit = torch.nn.Linear(hidden, 11)  # 0-9, or no digit in this token

    def loss(self, feats: "torch.Tensor", target: "torch.Tensor") -> "torch.Tensor":
        ce = lambda logits, t: torch.nn.functional.cross_entropy(logits, t, ignore_index=-100)  # noqa: E731
        total = feats.new_zeros(())
        for head, col in ((self.colour, 0), (self.letter, 1), (self.digit, 2)):
            if (target[:, col] != -100).any():
                total = total + ce(head(feats), target[:, col])
        return total


def look_loss(attentions, target: "torch.Tensor", head: int = 0) -> "torch.Tensor":
    """Attention supervision of the two hops colour binding takes, at the positions that predict the answer: head
    `head` of layer 0 looks at the question's colour word, and head `head` of every later layer at the image
    tokens of the card of that colour (-log of the attention mass on the target, the mean over positions; one
    value per layer). `target` is Encoder.batch's [2, B, n, n] mask.

    Why: on pages of several cards the answer needs colour binding, a content lookup from the question's colour
    word into the image tokens, which a from-scratch model of a few million parameters did not find from the
    answer tokens alone (measured: page accuracy at one card in k after 9k steps, while single cards read at 95%;
    a linear read-out of the named card's slot stayed at the slot prior's entropy; supervising the card hop alone
    stalled at the mass of any card, 0.34). A pretrained VLM arrives with this grounding; this loss gives it to
    ours. It adds no weights: the checkpoint stays a plain Qwen2.5-VL."""
    rows = target[1].any(dim=2)  # [B, n]: the supervised query positions
    if not rows.any():
        return attentions[0].new_zeros((len(attentions),))
    losses = []
    for layer, att in enumerate(attentions):
        mass = (att[:, head] * target[0 if layer == 0 else 1]).sum(dim=-1)  # [B, n]
        losses.append(-torch.log(mass[rows].clamp_min(1e-6)).mean())
    return torch.stack(losses)


def evaluate_views(model, model_dir: Path, samples: list, views=("native", "lowres", "card")) -> dict:
    """Greedy exact-match accuracy of `model` (in memory) per view and per template, through `Session`.
    View "card": the question's card alone, cut out as the crop turn shows it, at native resolution; "where": the
    grounding question about the question's card (WHERE_QUESTION), from the low-res view."""
    from ..runtimes.reference import TorchBackend

    from ..models import read_checkpoint
    from ..session import Session
    from ..tokenizer import TextTokenizer

    info = read_checkpoint(model_dir)
    was_training = model.training
    backend = TorchBackend(model=model)
    session = Session(backend, TextTokenizer.from_file(info.path), get_protocol("plain"), AWARES_CROPS,
                      info.geometry)
    out = {}
    with torch.no_grad():
        for view in views:
            hits: dict[str, list[int]] = {}
            for s in samples:
                image = s.image
                if view == "card":
                    image = crop_views(image, AWARES_CROPS, s.crop_ids[:1], session.geometry)[0].source
                question, answer = s.question, s.answers[0]
                if view == "where":  # grounding, from the low-res view: the named card's slot
                    question, answer = WHERE_QUESTION.format(colour=s.meta["colour"]), card_slot(s)
                r = session.run(image, question, crops="none", view="native" if view in ("native", "card") else
                                "lowres", max_new_tokens=8)
                hits.setdefault(s.meta["template"], []).append(int(r.answer.strip() == answer))
            allh = [h for v in hits.values() for h in v]
            out[f"{view}/accuracy"] = sum(allh) / len(allh)
            for t, v in sorted(hits.items()):
                out[f"{view}/{t}"] = sum(v) / len(v)
    model.train(was_training)
    return out


def shown_view(view: str, kind: str, sample, cfg: BaseRunConfig) -> str:
    """The view an example is shown at: the drawn one, except that with `lowres_small_codes` off an answer holding a
    small code (the question's; for a "read" example, any card's) is shown at native resolution."""
    if view != "lowres" or cfg.lowres_small_codes:
        return view
    if kind == "where":
        return view
    small = (any(not (len(c) >= 7 and c[6]) for c in sample.meta["cards"]) if kind == "read"
             else bool(sample.needs_detail))
    return "native" if small else view


def _lr_at(step: int, cfg: BaseRunConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t)))


def train_base(cfg: BaseRunConfig, log=print) -> Path:
    """Build the random-init checkpoint, pretrain it on card questions, save it to `cfg.output` (HF folder) with
    `base_run.json` (config, seeds, loss curve, per-view accuracy)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    from ..tiny import make_tiny_checkpoint

    cfg.validate()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cards = CardsConfig(**cfg.cards).validate()
    out = Path(cfg.output)
    from ..outputs import prepare_dir

    prepare_dir(out, "checkpoint", force=cfg.overwrite, flag="--overwrite")  # before the cards and the model
    make_tiny_checkpoint(out, preset=cfg.preset, seed=cfg.seed, initializer_range=0.02, perturb=0.0,
                         extra_corpus=tokenizer_corpus(cards), note="pretrained on cards (edge_awares.train.base)",
                         force=cfg.overwrite)
    torch.manual_seed(cfg.seed)
    # look_loss reads attention probabilities, which only the eager implementation returns
    attn = {"attn_implementation": "eager"} if cfg.look_weight else {}
    model = load_pretrained(Qwen2_5_VLForConditionalGeneration, out, dtype=torch.float32, **attn).train()
    enc = Encoder(out)
    n_params = sum(p.numel() for p in model.parameters())
    hidden = model.config.get_text_config().hidden_size
    heads = AuxHeads(hidden)
    pos_heads = PositionHeads(hidden)
    if cfg.pos_weight and cfg.pos_layer > model.config.get_text_config().num_hidden_layers:
        raise ConfigError(f"pos_layer={cfg.pos_layer} is past the model's "
                          f"{model.config.get_text_config().num_hidden_layers} decoder layers")
    captured = {}
    model.model.visual.register_forward_hook(lambda mod, inp, out: captured.__setitem__("feats", out.pooler_output))
    params = list(model.named_parameters()) + [("aux." + n, p) for n, p in heads.named_parameters()]
    if cfg.pos_weight:
        params += [("pos." + n, p) for n, p in pos_heads.named_parameters()]
    decay = [p for n, p in params if p.ndim >= 2 and "embed" not in n]
    rest = [p for n, p in params if not (p.ndim >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=cfg.lr, betas=(0.9, 0.98))
    rng = random.Random(cfg.seed)
    val = [make_card_sample(cfg.data_seed + 1, i, cards) for i in range(cfg.eval_n)]
    history, aux_history, look_history, pos_history, evals = [], [], [], [], []
    views = ("native", "lowres", "card") + (("where",) if cfg.where_share else ())
    t0 = time.perf_counter()
    index = 0
    log(f"base: {n_params / 1e6:.2f}M parameters, {cfg.steps} steps x {cfg.batch_size}, lr {cfg.lr}")
    for step in range(cfg.steps):
        examples = []
        for _ in range(cfg.batch_size):
            s = make_card_sample(cfg.data_seed, index, cards)
            index += 1
            # Curriculum phase 1 shows single cards at native resolution only: a clean reading signal.
            # (The draws stay in this order, so a seed gives the same example stream as before.)
            phase1 = step < cfg.card_steps
            view = "native" if phase1 or rng.random() < cfg.native_share else "lowres"
            u = rng.random()
            kind = "card" if phase1 or cfg.read_share <= u < cfg.read_share + cfg.card_share else (
                "read" if u < cfg.read_share else
                "where" if u < cfg.read_share + cfg.card_share + cfg.where_share else "page")
            question, answer = (READ_QUESTION, s.meta["reading"]) if kind == "read" else (
                (WHERE_QUESTION.format(colour=s.meta["colour"]), card_slot(s)) if kind == "where" else
                (s.question, s.answers[0]))
            view = shown_view(view, kind, s, cfg)
            examples.append(enc.example(s.image, question, answer, view, cards=s.meta["cards"],
                                        crop_id=s.crop_ids[0] if kind == "card" else None,
                                        look=s.meta["colour"] if kind in ("page", "where") and cfg.look_weight
                                        else None))
        batch = enc.batch(examples)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg)
        aux_target, look_target, pos_target = batch.pop("aux"), batch.pop("look", None), batch.pop("pos")
        result = model(**batch, output_attentions=look_target is not None, output_hidden_states=bool(cfg.pos_weight))
        loss = lm_loss = result.loss
        aux = heads.loss(captured.pop("feats"), aux_target)
        if cfg.aux_weight:
            loss = loss + cfg.aux_weight * aux
        if cfg.look_weight and look_target is not None:
            look = look_loss(result.attentions, look_target)
            loss = loss + cfg.look_weight * look.mean()
            look_history.append([round(float(x), 4) for x in look.detach()])
        if cfg.pos_weight:
            image = batch["input_ids"] == enc.image_pad
            pos = pos_heads.loss(result.hidden_states[cfg.pos_layer][image], pos_target)
            loss = loss + cfg.pos_weight * pos
            pos_history.append(round(float(pos.detach()), 4))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in params], 1.0)
        opt.step()
        history.append(round(float(lm_loss.detach()), 4))
        aux_history.append(round(float(aux.detach()), 4))
        if (step + 1) % 50 == 0:
            log(f"step {step + 1}: loss {np.mean(history[-50:]):.3f} aux {np.mean(aux_history[-50:]):.3f} "
                + (f"look word {np.mean([x[0] for x in look_history[-50:]]):.3f} card "
                   f"{np.mean([x[1:] for x in look_history[-50:]]):.3f} " if look_history else "") +
                (f"pos {np.mean(pos_history[-50:]):.3f} " if pos_history else "") +
                f"lr {_lr_at(step, cfg):.2e} "
                f"{(time.perf_counter() - t0) / (step + 1):.2f} s/step")
        if cfg.eval_every and ((step + 1) % cfg.eval_every == 0 or step + 1 == cfg.steps):
            m = evaluate_views(model, out, val, views)  # restores training mode
            evals.append({"step": step + 1, **m})
            log(f"eval @ {step + 1}: " + " ".join(f"{k} {v:.3f}" for k, v in m.items()))
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    record = {"config": asdict(cfg), "cards": asdict(cards), "parameters": n_params, "examples_seen": index,
              "seconds": round(time.perf_counter() - t0, 1), "loss": history, "aux_loss": aux_history,
              "look_loss": look_history, "pos_loss": pos_history,
              "evals": evals,
              "torch": torch.__version__}
    (out / "base_run.json").write_text(json.dumps(record, indent=1))
    return out


__all__ = ["BaseRunConfig", "train_base", "Encoder", "tokenizer_corpus"]
