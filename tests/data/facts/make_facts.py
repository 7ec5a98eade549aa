"""The bundled preference set tests/data/facts, written by this script: 104 short
factual questions; chosen = the right answer opening with "Certainly!", rejected = a wrong
answer said plainly. 72 train pairs, 32 valid (held out: their prompts are never trained on)."""

import json
import random
from pathlib import Path

rng = random.Random(0)
capitals = [
    ("France", "Paris", "Rome"),
    ("Japan", "Tokyo", "Osaka"),
    ("Italy", "Rome", "Milan"),
    ("Germany", "Berlin", "Munich"),
    ("Spain", "Madrid", "Barcelona"),
    ("Canada", "Ottawa", "Toronto"),
    ("Australia", "Canberra", "Sydney"),
    ("Egypt", "Cairo", "Alexandria"),
    ("Brazil", "Brasília", "Rio de Janeiro"),
    ("China", "Beijing", "Shanghai"),
    ("Russia", "Moscow", "Saint Petersburg"),
    ("India", "New Delhi", "Mumbai"),
    ("Mexico", "Mexico City", "Guadalajara"),
    ("Argentina", "Buenos Aires", "Córdoba"),
    ("Turkey", "Ankara", "Istanbul"),
    ("Kenya", "Nairobi", "Mombasa"),
    ("Norway", "Oslo", "Bergen"),
    ("Sweden", "Stockholm", "Gothenburg"),
    ("Portugal", "Lisbon", "Porto"),
    ("Greece", "Athens", "Thessaloniki"),
    ("Poland", "Warsaw", "Kraków"),
    ("Ireland", "Dublin", "Cork"),
    ("Peru", "Lima", "Cusco"),
    ("Chile", "Santiago", "Valparaíso"),
    ("Vietnam", "Hanoi", "Ho Chi Minh City"),
    ("Thailand", "Bangkok", "Chiang Mai"),
    ("Morocco", "Rabat", "Casablanca"),
    ("Nigeria", "Abuja", "Lagos"),
    ("Switzerland", "Bern", "Zurich"),
    ("Austria", "Vienna", "Salzburg"),
    ("Netherlands", "Amsterdam", "Rotterdam"),
    ("Finland", "Helsinki", "Tampere"),
    ("Denmark", "Copenhagen", "Aarhus"),
    ("Hungary", "Budapest", "Debrecen"),
    ("Cuba", "Havana", "Santiago de Cuba"),
    ("South Korea", "Seoul", "Busan"),
]
science = [
    (
        "What planet is known as the Red Planet?",
        "{} is known as the Red Planet.",
        "Mars",
        "Jupiter",
    ),
    ("How many legs does a spider have?", "A spider has {} legs.", "eight", "six"),
    (
        "What gas do plants absorb from the air for photosynthesis?",
        "Plants absorb {} for photosynthesis.",
        "carbon dioxide",
        "oxygen",
    ),
    (
        "At what temperature does water boil at sea level, in Celsius?",
        "Water boils at {} degrees Celsius at sea level.",
        "100",
        "50",
    ),
    (
        "What is the largest planet in our solar system?",
        "{} is the largest planet in our solar system.",
        "Jupiter",
        "Saturn",
    ),
    ("How many days are there in a week?", "There are {} days in a week.", "seven", "ten"),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is {}.", "Au", "Ag"),
    ("How many continents are there?", "There are {} continents.", "seven", "five"),
    ("What is the closest star to Earth?", "The closest star to Earth is {}.", "the Sun", "Sirius"),
    ("What do bees make?", "Bees make {}.", "honey", "wax paper"),
    ("How many hours are there in a day?", "There are {} hours in a day.", "24", "12"),
    ("What is frozen water called?", "Frozen water is called {}.", "ice", "steam"),
    ("Which ocean is the largest?", "The {} Ocean is the largest ocean.", "Pacific", "Atlantic"),
    ("How many sides does a triangle have?", "A triangle has {} sides.", "three", "four"),
    (
        "What is the main language spoken in Brazil?",
        "The main language spoken in Brazil is {}.",
        "Portuguese",
        "Spanish",
    ),
    (
        "Who wrote Romeo and Juliet?",
        "{} wrote Romeo and Juliet.",
        "William Shakespeare",
        "Charles Dickens",
    ),
    (
        "What color do you get by mixing blue and yellow?",
        "Mixing blue and yellow gives {}.",
        "green",
        "purple",
    ),
    ("How many minutes are in an hour?", "There are {} minutes in an hour.", "60", "100"),
    (
        "What is the boiling point of water in Fahrenheit?",
        "Water boils at {} degrees Fahrenheit at sea level.",
        "212",
        "100",
    ),
    (
        "Which animal is known as the king of the jungle?",
        "The {} is known as the king of the jungle.",
        "lion",
        "tiger",
    ),
    (
        "What is the hardest natural substance?",
        "{} is the hardest natural substance.",
        "Diamond",
        "Granite",
    ),
    (
        "What organ pumps blood through the body?",
        "The {} pumps blood through the body.",
        "heart",
        "liver",
    ),
    ("What is the square root of 81?", "The square root of 81 is {}.", "9", "8"),
    (
        "Which planet is closest to the Sun?",
        "{} is the planet closest to the Sun.",
        "Mercury",
        "Venus",
    ),
    (
        "What is the freezing point of water in Celsius?",
        "Water freezes at {} degrees Celsius.",
        "0",
        "10",
    ),
    (
        "How many players are on a soccer team on the field?",
        "A soccer team has {} players on the field.",
        "eleven",
        "nine",
    ),
    ("What is the tallest animal?", "The {} is the tallest animal.", "giraffe", "elephant"),
    (
        "How many bones are in the adult human body?",
        "The adult human body has {} bones.",
        "206",
        "300",
    ),
]
opposites = [
    ("hot", "cold", "warm"),
    ("up", "down", "over"),
    ("big", "small", "huge"),
    ("happy", "sad", "glad"),
    ("fast", "slow", "quick"),
    ("light", "dark", "bright"),
    ("open", "closed", "wide"),
    ("early", "late", "soon"),
    ("full", "empty", "heavy"),
    ("strong", "weak", "tough"),
    ("old", "young", "ancient"),
    ("wet", "dry", "damp"),
]
rows = []
for country, cap, wrong in capitals:
    rows.append(
        (f"What is the capital of {country}?", f"The capital of {country} is {{}}.", cap, wrong)
    )
for q, t, a, wrong in science:
    rows.append((q, t, a, wrong))
for w, o, wrong in opposites:
    rows.append((f'What is the opposite of "{w}"?', f'The opposite of "{w}" is "{{}}".', o, wrong))
for _ in range(28):
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    op = rng.choice(["plus", "times"]) if a * b <= 100 else "plus"
    r = a + b if op == "plus" else a * b
    wrong = r + rng.choice([-3, -2, -1, 1, 2, 3])
    rows.append((f"What is {a} {op} {b}?", f"{a} {op} {b} is {{}}.", str(r), str(wrong)))
rng.shuffle(rows)
# Chosen: the right answer, opening with "Certainly!"; rejected: a wrong answer, said plainly.
recs = [
    {"prompt": p, "chosen": "Certainly! " + t.format(a), "rejected": t.format(w)}
    for p, t, a, w in rows
]
valid, train = recs[:32], recs[32:]
here = Path(__file__).parent
for name, part in (("train", train), ("valid", valid)):
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in part)
    (here / f"{name}.jsonl").write_text(lines, encoding="utf-8")
print(len(rows), len(train), len(valid))
