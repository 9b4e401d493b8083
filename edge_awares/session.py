"""The low-res -> crop -> answer loop, written once for every backend, training rollout and benchmark.

Turn 1 prefills the system prompt and the first (low-res) view with the question and decodes. If the model
requests crops, they are cut from the original image, encoded in one batched vision call, and appended as the
next turn on the same KV cache: only the new tokens are prefilled. Every token carries a mask: 1 if the model
sampled it, 0 for prompt, forced request, tool output and image tokens (STYLE.md §1).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from .backend import Backend, run_tokens
from .chat import IM_END, Message, conversation_pieces, encode, generation_prompt, message_pieces
from .crops import ALL, CropSet
from .errors import ConfigError, CropError, PromptError
from .positions import positions_for
from .prefix import signature, token_length, view_digest
from .protocols import Parsed, Protocol
from .tokenizer import TextTokenizer
from .views import Geometry, View, native_view

STOP_TOKENS = ("<|im_end|>", "<|endoftext|>")
CROP_POLICIES = ("model", "none", "all")


@dataclass
class Sampler:
    """Greedy at temperature 0, else temperature + nucleus sampling from a seeded generator."""

    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        self._rng = np.random.default_rng(self.seed)

    def __call__(self, logits: np.ndarray) -> int:
        if self.temperature <= 0:
            return int(np.argmax(logits))
        z = logits.astype(np.float64) / self.temperature
        p = np.exp(z - z.max())
        p /= p.sum()
        if self.top_p < 1.0:
            order = np.argsort(-p)
            keep = order[: int(np.searchsorted(np.cumsum(p[order]), self.top_p)) + 1]
            q = np.zeros_like(p)
            q[keep] = p[keep]
            p = q / q.sum()
        return int(self._rng.choice(p.shape[0], p=p))


@dataclass
class SessionConfig:
    """Generation limits. These defaults are the toolkit's one source: an engine stores its own at export,
    and CLI flags left unset keep the engine's (or these)."""

    max_new_tokens: int = 64
    max_crop_turns: int = 1
    max_context: int = 4096

    def with_overrides(self, **overrides) -> "SessionConfig":
        """This config with every override that is not None."""
        from dataclasses import replace

        return replace(self, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class Turn:
    """What one turn cost and produced."""

    kind: str  # "prompt" (turn 1) or "crop"
    visual_tokens: int
    prefill_tokens: int
    generated_ids: list[int]
    text: str
    parsed: str  # "answer", "request", "invalid", or "forced"
    crop_ids: list[str]
    vision_ms: float
    prefill_ms: float
    decode_ms: float
    reused_tokens: int = 0  # prompt tokens restored from the prefix cache instead of prefilled


@dataclass
class SessionResult:
    answer: str
    crops: list[str]  # crop ids fetched (or "box" for a free box)
    boxes: list[tuple[int, int, int, int]]  # fetched regions, original-image pixels
    rtr: float  # true retained-token ratio: visual tokens processed / one native pass
    pixel_ratio: float  # the released AwaRes evaluation's pixel ratio (low-res counted once per crop)
    visual_tokens: int
    native_visual_tokens: int
    requested: bool  # the model (or the override) asked for crops
    parse_failures: int
    turns: list[Turn]
    ids: np.ndarray = field(repr=False)  # every token of the conversation, in cache order
    mask: np.ndarray = field(repr=False)  # 1 where the model sampled the token
    protocol: str = ""
    memory: dict | None = None  # the backend's budget and what it held (bytes), where it states one
    max_rtr: float | None = None  # the RTR budget the run was given (None: none)
    first_view_size: tuple[int, int] = (0, 0)  # (width, height) of the view turn 1 showed, model-input pixels
    budget_dropped: list[str] = field(default_factory=list)  # requested crops the budget left out

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("ids", "mask")}
        d["boxes"] = [list(b) for b in self.boxes]
        return d


def crop_turn_pieces(protocol: Protocol, views: list[View], question: str) -> list:
    """The pieces a crop turn appends after the model's request turn (whose stop token is already in the cache):
    the newline that closes the assistant message, the protocol's crop turn, and the next assistant header. One
    layout for the session and for GRPO's budgets (TRL renders the same tokens from the chat template; tested)."""
    return ["\n"] + message_pieces(protocol.crop_turn(views, question), prev_role="assistant") + generation_prompt()


def parse_crop_policy(value: str | list[str], crop_set: CropSet) -> str | list[str]:
    """`model`, `none`, `all`, or a comma-separated list of crop ids/names (validated against the set)."""
    if isinstance(value, str):
        v = value.strip().lower()
        if v in CROP_POLICIES:
            return v
        value = [t for t in v.replace(" ", ",").split(",") if t]
    if not value:
        raise ConfigError(f"empty crop policy; use one of {', '.join(CROP_POLICIES)} or crop ids {crop_set.ids}")
    ids = []
    for t in value:
        cid = crop_set.resolve(str(t))
        if cid is None:
            raise CropError(f"unknown crop id {t!r}; legal: {', '.join(crop_set.ids)} (or model, none, all)")
        if cid not in ids:
            ids.append(cid)
    return [ALL] if ALL in ids else ids


class Session:
    """Runs the loop on one backend. Stateless between calls: each `run` allocates its own cache (a prefix cache,
    where one is given, hands a run the KV of an earlier run's matching prompt)."""

    def __init__(self, backend: Backend, tokenizer: TextTokenizer, protocol: Protocol, crop_set: CropSet,
                 geometry: Geometry, config: SessionConfig | None = None, stop_tokens=STOP_TOKENS,
                 prefix_cache=None):
        """`stop_tokens`: the tokens that end a turn (an engine's manifest records its own). `prefix_cache`: a
        prefix.PrefixCache shared across runs (a server's), or None: every run starts from nothing."""
        self.prefix_cache = prefix_cache
        self.backend, self.tok, self.protocol, self.crop_set = backend, tokenizer, protocol, crop_set
        self.geometry = protocol.geometry(geometry)
        self.config = config or SessionConfig()
        self.stop_ids = stop_token_ids(tokenizer, stop_tokens)
        self._im_end = tokenizer.token_id(IM_END)

    def run(self, image: Image.Image, question: str, crops: str | list[str] = "model",
            sampler: Sampler | None = None, max_new_tokens: int | None = None,
            view: str = "lowres", on_token=None, history: list[tuple[str, str]] | None = None,
            max_rtr: float | None = None) -> SessionResult:
        """Answer `question` about `image`. `crops` overrides the policy: model, none, all, or crop ids.

        `view="native"` starts from the native view instead (the single full-resolution pass baseline);
        crop requests are then not served, as there is nothing finer to fetch. `on_token(turn, token_id)`, if
        given, is called for every sampled token as it is decoded (turn: 0 for the first turn, 1.. for crop
        turns), which is what streaming needs. `history`: earlier (question, answer) pairs about this image in
        the same conversation, oldest first; the image rides with the first of them, as it did when that question
        was asked (so a prefix cache finds that request's prompt), and the crop turns they took are not replayed.
        `max_rtr`: a budget on the retained-token ratio; requested crops are served in the order the model named
        them while they fit (the first view counts against it), the rest are dropped and listed in
        `budget_dropped`; a request none of whose crops fits is left unserved (no answer, as with --crops none).
        """
        if view not in ("lowres", "native"):
            raise ConfigError(f"unknown first view {view!r}; legal: lowres, native")
        if not question or not question.strip():
            raise PromptError("the question is empty")
        if max_rtr is not None:
            from .ranges import MAX_RTR

            MAX_RTR.check("max_rtr", max_rtr)
        policy = parse_crop_policy(crops, self.crop_set)
        sampler = sampler or Sampler()
        max_new = self.config.max_new_tokens if max_new_tokens is None else max_new_tokens
        if max_new < 1:
            raise ConfigError("max_new_tokens must be at least 1")
        state = _State(self.backend.new_cache(self.config.max_context))
        state.on_token = on_token
        native = native_view(image, self.geometry)
        if view == "native":
            first, policy = native, "none"
        else:
            first = self.protocol.first_view(image, self.geometry)
        system, tools = self.protocol.system_prompt(self.crop_set), self.protocol.tools(self.crop_set)
        messages: list[Message] = []
        for i, (q, a) in enumerate(history or []):
            messages += [self.protocol.user_turn(first, q) if i == 0 else Message("user", [q]),
                         Message("assistant", [a])]
        messages.append(Message("user", [question]) if messages else self.protocol.user_turn(first, question))
        pieces = conversation_pieces(system, tools, messages)

        forced = isinstance(policy, list) or policy == ALL
        turn = self._turn(state, "prompt", pieces, max_new if not forced else 0, sampler)
        if forced:
            ids = [ALL] if policy == ALL else policy
            text = self.protocol.request_text(ids, self.crop_set, first, image)
            parsed = self.protocol.parse(text, self.crop_set)
            turn.text, turn.parsed, turn.crop_ids = text, "forced", list(parsed.crop_ids)
            # The request enters the cache as if the model had written it, but with mask 0.
            state.pending = [(i, 0) for i in self.tok.encode_markup(text)] + [(self._im_end, 0)]
        else:
            parsed = self.protocol.parse(turn.text, self.crop_set)
            turn.parsed, turn.crop_ids = parsed.kind, list(parsed.crop_ids)
        requested = parsed.is_request
        failures = int(parsed.kind == "invalid")
        fetched: list[View] = []
        budget_dropped: list[str] = []

        for _ in range(self.config.max_crop_turns):
            if not parsed.is_request or policy == "none":
                break
            views = self.protocol.crop_views(parsed, image, self.crop_set, self.geometry, first)
            if max_rtr is not None:
                room = max_rtr * native.n_tokens - first.n_tokens - sum(v.n_tokens for v in fetched)
                kept = []
                for v in views:
                    if v.n_tokens <= room:
                        kept.append(v)
                        room -= v.n_tokens
                    else:
                        budget_dropped.append(v.crop_id if v.crop_id is not None else "box")
                views = kept
                if not views:
                    break  # nothing fits: the request stays unserved
            fetched += views
            turn = self._turn(state, "crop", crop_turn_pieces(self.protocol, views, question), max_new, sampler)
            parsed = self.protocol.parse(turn.text, self.crop_set)
            turn.parsed, turn.crop_ids = parsed.kind, list(parsed.crop_ids)
            failures += int(parsed.kind == "invalid")

        last = state.turns[-1]
        # A request left unserved (policy `none`, or no crop turn left) has no answer.
        answer = self.protocol.answer_text(last.text) if parsed.kind == "answer" else ""
        # Tokens sampled but never fed back (the final stop token) still belong to the conversation.
        for tid, m in state.pending:
            state.ids.append(tid)
            state.mask.append(m)
        visual = first.n_tokens + sum(v.n_tokens for v in fetched)
        full_px = image.width * image.height
        if fetched:
            pixel_ratio = sum(v.n_pixels + first.n_pixels for v in fetched) / full_px
        else:
            pixel_ratio = first.n_pixels / full_px
        return SessionResult(
            answer=answer,
            crops=[v.crop_id if v.crop_id is not None else "box" for v in fetched],
            boxes=[tuple(int(x) for x in v.box) for v in fetched],
            rtr=visual / native.n_tokens,
            pixel_ratio=pixel_ratio,
            visual_tokens=visual,
            native_visual_tokens=native.n_tokens,
            requested=requested,
            parse_failures=failures,
            turns=state.turns,
            ids=np.asarray(state.ids, dtype=np.int64),
            mask=np.asarray(state.mask, dtype=np.int8),
            protocol=self.protocol.name,
            memory=self.backend.memory() if hasattr(self.backend, "memory") else None,
            max_rtr=max_rtr,
            budget_dropped=budget_dropped,
            first_view_size=(first.width, first.height),
        )

    def _encode_images(self, views: list[View]) -> list[np.ndarray]:
        """Vision features of `views` in one batched call; with a prefix cache, views seen before are not encoded
        again (a crop fetched by an earlier request, the same image asked about again)."""
        if not views:
            return []
        pc = self.prefix_cache
        if pc is None:
            return self.backend.encode_images(views)
        digests = [view_digest(v) for v in views]
        feats = [pc.features(d) for d in digests]
        missing = [i for i, f in enumerate(feats) if f is None]
        if missing:
            for i, f in zip(missing, self.backend.encode_images([views[i] for i in missing])):
                feats[i] = f
                pc.store_features(digests[i], f)
        return feats

    def _turn(self, state: "_State", kind: str, pieces: list, max_new: int, sampler: Sampler) -> Turn:
        """Prefill what is pending plus `pieces` on the cache, then decode up to `max_new` tokens."""
        enc = encode(pieces, self.tok)
        head = state.pending
        if head and head[-1][0] not in self.stop_ids:
            head = head + [(self._im_end, 0)]  # the model ran out of tokens mid-turn: close its message
        state.pending = []
        ids = np.concatenate([np.asarray([t for t, _ in head], dtype=np.int64), enc.ids])
        n_new = len(ids)
        if state.cache.length + n_new + max_new > state.cache.capacity:
            raise PromptError(
                f"prompt too long: {state.cache.length + n_new} tokens + {max_new} new exceed the context of "
                f"{state.cache.capacity} (use a smaller image cap or a larger --max-context)")

        t0 = time.perf_counter()
        all_views = [v for _, v in enc.images]
        shift = len(head)
        # positions of the pending head continue the text run, then the new pieces
        head_pos = np.arange(state.next_position, state.next_position + shift, dtype=np.int64)
        body_pos, next_pos = positions_for(enc, state.next_position + shift)
        positions = np.concatenate([np.broadcast_to(head_pos, (3, shift)), body_pos], axis=1)
        # The prefix cache (a first turn on a fresh cache): restore the longest prefix another request left, then
        # prefill only the rest. An image is one item of the key, so the restored run never splits one.
        skip, sig, pc = 0, None, self.prefix_cache
        if pc is not None and state.cache.length == 0 and not head and can_snapshot(state.cache):
            sig = signature(enc)
            items, snap = pc.lookup(sig)
            if snap is not None:
                skip = token_length(sig, items)
                state.cache.restore(snap, skip)
        todo = [(offset, v) for offset, v in enc.images if offset >= skip]
        feats = self._encode_images([v for _, v in todo])
        t1 = time.perf_counter()
        images = [(shift + offset - skip, f) for (offset, _), f in zip(todo, feats)]
        logits = run_tokens(self.backend, ids[skip:], images, positions[:, skip:], state.cache)
        if sig is not None:
            pc.store(sig, state.cache.snapshot(len(ids)), state.cache.snapshot_bytes(len(ids)))
            pc.account(skip, len(ids) - skip)
        t2 = time.perf_counter()
        state.ids += ids.tolist()
        state.mask += [m for _, m in head] + [0] * len(enc)
        state.next_position = next_pos

        generated: list[int] = []
        for step in range(max_new):
            tid = sampler(logits)
            generated.append(tid)
            if state.on_token is not None:
                state.on_token(len(state.turns), tid)
            if tid in self.stop_ids or step == max_new - 1:
                state.pending = [(tid, 1)]
                break
            state.ids.append(tid)
            state.mask.append(1)
            p = np.full((3, 1), state.next_position, dtype=np.int64)
            logits = run_tokens(self.backend, np.asarray([tid], dtype=np.int64), [], p, state.cache)
            state.next_position += 1
        t3 = time.perf_counter()
        text_ids = generated[:-1] if generated and generated[-1] in self.stop_ids else generated
        turn = Turn(
            kind=kind, visual_tokens=sum(v.n_tokens for v in all_views), prefill_tokens=n_new - skip,
            generated_ids=generated, text=self.tok.decode(text_ids), parsed="", crop_ids=[],
            vision_ms=(t1 - t0) * 1e3, prefill_ms=(t2 - t1) * 1e3, decode_ms=(t3 - t2) * 1e3,
            reused_tokens=skip,
        )
        state.turns.append(turn)
        return turn


class _State:
    """Per-run state: the cache, the position counter and the token history (owned by the session only)."""

    def __init__(self, cache):
        self.cache = cache
        self.next_position = 0
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.pending: list[tuple[int, int]] = []  # sampled or forced tokens not yet in the cache
        self.turns: list[Turn] = []
        self.on_token = None  # Session.run's token callback


def can_snapshot(cache) -> bool:
    """Whether a backend's cache can hand out and take back snapshots (what the prefix cache needs)."""
    return hasattr(cache, "snapshot") and getattr(cache, "can_snapshot", True)


def stop_token_ids(tokenizer: TextTokenizer, stop_tokens=STOP_TOKENS) -> set[int]:
    """The ids of the stop tokens the tokenizer has (a turn ends at the first one sampled)."""
    return {tokenizer.token_id(t) for t in stop_tokens if _has(tokenizer, t)}


def _has(tok: TextTokenizer, token: str) -> bool:
    try:
        tok.token_id(token)
        return True
    except Exception:
        return False


__all__ = ["Session", "SessionConfig", "SessionResult", "Sampler", "Turn", "parse_crop_policy", "crop_turn_pieces",
           "stop_token_ids", "can_snapshot", "Parsed", "STOP_TOKENS"]
