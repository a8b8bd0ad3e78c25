"""Write data/offline/alpaca_synthetic.jsonl: Alpaca-format records for the offline profile.

Deterministic (seeded `random.Random`, fixed vocabularies), so the committed file can be regenerated
byte for byte: `python scripts/make_offline_data.py`. The tasks are rule-based and short, so that even the
tiny random-init offline model visibly learns them; about half have an empty `input`, to exercise both
template variants.
"""
from __future__ import annotations

import argparse
import random
from pathlib import Path

from alpaca_qlora.files import write_jsonl

WORDS = ("apple banana cherry river mountain cloud stone garden window candle forest ocean bridge "
         "silver rabbit lantern meadow thunder violet harbor").split()
CAPITALS = {"France": "Paris", "Japan": "Tokyo", "Italy": "Rome", "Spain": "Madrid", "Egypt": "Cairo",
            "Canada": "Ottawa", "Kenya": "Nairobi", "Peru": "Lima", "Norway": "Oslo", "Chile": "Santiago"}
COLOURS = {"the sky on a clear day": "blue", "fresh grass": "green", "snow": "white", "coal": "black",
           "a ripe banana": "yellow", "a ripe tomato": "red"}


def make_record(rng: random.Random) -> dict[str, str]:
    task = rng.randrange(8)
    words = rng.sample(WORDS, rng.randint(3, 6))
    numbers = [rng.randint(1, 99) for _ in range(rng.randint(3, 6))]
    if task == 0:
        return {"instruction": "Reverse the order of the words.", "input": " ".join(words),
                "output": " ".join(reversed(words))}
    if task == 1:
        return {"instruction": "Convert the text to upper case.", "input": " ".join(words),
                "output": " ".join(words).upper()}
    if task == 2:
        a, b = numbers[:2]
        return {"instruction": "Add the two numbers.", "input": f"{a} and {b}", "output": f"The sum is {a + b}."}
    if task == 3:
        return {"instruction": "Sort the numbers in ascending order.", "input": ", ".join(map(str, numbers)),
                "output": ", ".join(map(str, sorted(numbers)))}
    if task == 4:
        country = rng.choice(sorted(CAPITALS))
        return {"instruction": f"What is the capital of {country}?", "input": "",
                "output": f"The capital of {country} is {CAPITALS[country]}."}
    if task == 5:
        thing = rng.choice(sorted(COLOURS))
        return {"instruction": f"What colour is {thing}?", "input": "",
                "output": f"The colour of {thing} is {COLOURS[thing]}."}
    if task == 6:
        n = rng.randint(2, 9)
        return {"instruction": f"Count from 1 to {n}.", "input": "",
                "output": ", ".join(str(i) for i in range(1, n + 1))}
    word = rng.choice(WORDS)
    return {"instruction": f"Spell the word {word} letter by letter.", "input": "",
            "output": "-".join(word)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("data/offline/alpaca_synthetic.jsonl"))
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    count = write_jsonl(args.out, (make_record(rng) for _ in range(args.records)))
    print(f"wrote {count} records to {args.out}")


if __name__ == "__main__":
    main()
