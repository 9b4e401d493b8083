"""Regenerates the example pages and examples/questions.jsonl (every question each page supports), and the card
pages the shipped demo policy reads (examples/cards_*.png, examples/cards_questions.jsonl; stream 4242, which no
training or test split of `edge-awares train demo` uses).

Run from the repository root: ``python examples/make_examples.py``. Output is deterministic for a given
Pillow version and DejaVu fonts; the pages were picked for variety (a chart, several panels and shapes).
"""

from pathlib import Path

from edge_awares.data.cards import make_card_page
from edge_awares.data.format import write_samples
from edge_awares.data.synth import SynthConfig, make_page

HERE = Path(__file__).resolve().parent
PAGES = [  # (file, seed, index, config)
    ("page_448_a.png", 2024, 1, SynthConfig()),
    ("page_448_b.png", 2024, 31, SynthConfig()),
    ("page_672x448.png", 2024, 7, SynthConfig(width=672, height=448)),
]

CARD_PAGES = [(f"cards_{c}.png", 4242, i) for i, c in enumerate("abcd")]


def write_pages(pages: list[tuple[str, list]], jsonl: str) -> None:
    """Save each page's image once and every question of it, pointing at that file, to `jsonl`."""
    samples = []
    for name, page in pages:
        page[0].image.save(HERE / name, format="PNG", optimize=True)
        for s in page:
            s.image = str(HERE / name)
        samples.extend(page)
    write_samples(HERE / jsonl, samples)
    print(f"wrote {len(pages)} pages and {len(samples)} questions to {HERE / jsonl}")


def main() -> None:
    write_pages([(name, make_card_page(seed, index)) for name, seed, index in CARD_PAGES], "cards_questions.jsonl")
    write_pages([(name, make_page(seed, index, cfg)) for name, seed, index, cfg in PAGES], "questions.jsonl")


if __name__ == "__main__":
    main()
