"""Regenerates the example pages and examples/questions.jsonl (every question each page supports).

Run from the repository root: ``python examples/make_examples.py``. Output is deterministic for a given
Pillow version and DejaVu fonts; the pages were picked for variety (a chart, several panels and shapes).
"""

from pathlib import Path

from edge_awares.data.format import write_samples
from edge_awares.data.synth import SynthConfig, make_page

HERE = Path(__file__).resolve().parent
PAGES = [  # (file, seed, index, config)
    ("page_448_a.png", 2024, 1, SynthConfig()),
    ("page_448_b.png", 2024, 31, SynthConfig()),
    ("page_672x448.png", 2024, 7, SynthConfig(width=672, height=448)),
]


def main() -> None:
    samples = []
    for name, seed, index, cfg in PAGES:
        page = make_page(seed, index, cfg)
        page[0].image.save(HERE / name, format="PNG", optimize=True)
        for s in page:
            s.image = str(HERE / name)
        samples.extend(page)
    write_samples(HERE / "questions.jsonl", samples)
    print(f"wrote {len(PAGES)} pages and {len(samples)} questions to {HERE}")


if __name__ == "__main__":
    main()
