"""Draw what the policy looked at: the fetched regions outlined on the original image, for `ask --show`."""

from __future__ import annotations

from PIL import Image, ImageDraw

from .session import SessionResult

_COLOURS = [(230, 57, 70), (29, 120, 218), (42, 157, 80), (244, 162, 97), (131, 56, 236)]


def draw_crops(image: Image.Image, result: SessionResult) -> Image.Image:
    """A copy of `image` with each fetched region outlined and labelled, and a caption with RTR and answer."""
    out = image.convert("RGB").copy()
    d = ImageDraw.Draw(out)
    width = max(2, round(min(out.size) / 200))
    for i, (crop_id, box) in enumerate(zip(result.crops, result.boxes)):
        colour = _COLOURS[i % len(_COLOURS)]
        x0, y0, x1, y1 = box
        inset = width * i  # overlapping regions (e.g. a quadrant inside a half) stay distinguishable
        d.rectangle((x0 + inset, y0 + inset, x1 - 1 - inset, y1 - 1 - inset), outline=colour, width=width)
        label = f"crop {crop_id}"
        tw = d.textlength(label)
        d.rectangle((x0 + inset, y0 + inset, x0 + inset + tw + 6, y0 + inset + 14), fill=colour)
        d.text((x0 + inset + 3, y0 + inset + 1), label, fill="white")
    caption = (f"RTR {result.rtr:.2f} - " + (f"crops {', '.join(result.crops)}" if result.crops else "low-res only")
               + f" - answer: {result.answer[:60]!r}")
    bar = Image.new("RGB", (out.width, 18), (30, 30, 30))
    ImageDraw.Draw(bar).text((4, 3), caption, fill="white")
    framed = Image.new("RGB", (out.width, out.height + bar.height), "white")
    framed.paste(out, (0, 0))
    framed.paste(bar, (0, out.height))
    return framed
