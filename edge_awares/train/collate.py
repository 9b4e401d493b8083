"""The SFT batch builder: TRL's vision-language collator with the three changes multi-turn crop trajectories need.

1. Images inside tool turns: TRL fills image placeholders only outside tool messages; `fill_images` fills all.
2. Tools: TRL's vision collator renders without the `tools` column, so the crop tool would be missing from the
   system prompt; it is passed here.
3. Per-turn loss weights and the sampled-token mask (`render.sampled_mask`): TRL has one weight per trained token.
Images are resolved lazily from view references (render.view_ref) with the runtime's view code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import TrainError
from .render import TrajectoryRenderer, fill_images, sampled_mask


def make_collator(processor, renderer: TrajectoryRenderer, max_length: int | None = None):
    """A TRL `DataCollatorForVisionLanguageModeling` subclass instance for rows made by `TrajectoryRenderer.row`.

    `max_length` (tokens) raises TrainError for a longer conversation instead of truncating it, since truncation
    would cut image tokens away from their pixels or drop the answer.
    """
    from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

    from .render import chat_templates

    @dataclass
    class TrajectoryCollator(DataCollatorForVisionLanguageModeling):
        renderer: Any = None
        limit: int | None = None

        def _collate_language_modeling(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
            tools = {ex.get("tools") or "" for ex in examples}
            if len(tools) != 1:
                raise TrainError("a batch mixes conversations with different tool schemas (one protocol per run)")
            tools_json = tools.pop()
            messages = []
            for ex in examples:
                images = [_model_image(self.renderer, ref) for ref in ex["images"]]
                messages.append(fill_images(ex["messages"], images))
            out = self.processor.apply_chat_template(
                messages,
                tools=json.loads(tools_json) if tools_json else None,
                chat_template=self.chat_template,
                tokenize=True,
                return_dict=True,
                return_tensors="pt",
                return_assistant_tokens_mask=True,
                processor_kwargs={"padding": True, "padding_side": "right", "add_special_tokens": False},
            )
            ids = out["input_ids"]
            if self.limit is not None:
                lengths = out["attention_mask"].sum(1).tolist()
                over = [(ex.get("id"), n) for ex, n in zip(examples, lengths) if n > self.limit]
                if over:
                    raise TrainError(f"conversations longer than max_length={self.limit}: {over}; raise max_length "
                                     "or lower the view cap (truncation would separate image tokens from pixels)")
            im_end = self.processor.tokenizer.convert_tokens_to_ids("<|im_end|>")
            mask, weights = sampled_mask(ids, out.pop("assistant_masks"), [ex["loss_weights"] for ex in examples],
                                         im_end)
            mask = mask * out["attention_mask"]
            labels = ids.clone()
            labels[mask == 0] = -100
            out["labels"] = labels
            out["loss_weights"] = weights * mask
            return out

    _, training_template = chat_templates()
    return TrajectoryCollator(processor=processor, assistant_only_loss=True, chat_template=training_template,
                              renderer=renderer, limit=max_length)


def _model_image(renderer: TrajectoryRenderer, ref: str):
    from .render import model_image

    return model_image(renderer.resolve_view(ref))


__all__ = ["make_collator"]
