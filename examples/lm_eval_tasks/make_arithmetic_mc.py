"""Write ``arithmetic_mc.jsonl``: the offline lm-eval tasks' data, from :mod:`mdlm.data.arithmetic`.

The items are the first ``--num`` problems of the *test* split of ``configs/sft_arithmetic.yaml``
(level 1, seed 0: one operation on 2-digit numbers), so they are held out of that config's training
set. Each item has the prompt fields and four worked solutions in the training format
(``47+38=85\\n#### 85``): the correct one and three near misses whose result is off by 1, 2, 9, 10
or 11 (a dropped or extra carry or borrow), still 2-digit. Deterministic: the same file on every
machine (the test ``tests/evaluation/test_lm_eval_offline.py`` regenerates it and compares bytes)::

    python examples/lm_eval_tasks/make_arithmetic_mc.py            # rewrites the shipped file
    python examples/lm_eval_tasks/make_arithmetic_mc.py --out /tmp/x.jsonl --num 50
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from mdlm.data.arithmetic import generate_level, get_level

HERE = Path(__file__).resolve().parent
DEFAULT_OUT = HERE / "arithmetic_mc.jsonl"
OFFSETS = (1, 2, 9, 10, 11)  # near misses: off by one or two, or a carry/borrow dropped or added


def worked_solution(operands, operators, final: int) -> str:
    """The training format of a solution, with the last line's result replaced by ``final``."""
    lines, value = [], operands[0]
    for i, (op, x) in enumerate(zip(operators, operands[1:])):
        result = final if i == len(operators) - 1 else (value + x if op == "+" else value - x)
        lines.append(f"{value}{op}{x}={result}")
        value = result
    return "\n".join(lines) + f"\n#### {final}"


def make_items(num: int = 100, level: int = 1, seed: int = 0) -> list[dict]:
    lv = get_level(level)
    problems = generate_level(level, {"test": num}, seed)["test"]
    items = []
    for i, p in enumerate(problems):
        rng = random.Random(f"mdlm-lm-eval-arithmetic-mc/{seed}/{level}/{i}")
        near = sorted({p.answer + s * d for d in OFFSETS for s in (1, -1)} - {p.answer})
        near = [n for n in near if lv.low <= n <= lv.high]
        finals = [p.answer, *rng.sample(near, 3)]
        rng.shuffle(finals)
        items.append({
            "id": i,
            "question": p.question,
            "answer": str(p.answer),
            "choices": [worked_solution(p.operands, p.operators, f) for f in finals],
            "label": finals.index(p.answer),
            "operands": list(p.operands),
            "operators": list(p.operators),
        })
    return items


def write(path: Path, items: list[dict]) -> None:
    path.write_text("".join(json.dumps(item, sort_keys=True) + "\n" for item in items), encoding="utf-8")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSONL to write (default: the shipped file)")
    parser.add_argument("--num", type=int, default=100, help="items (default 100)")
    args = parser.parse_args(argv)
    items = make_items(args.num)
    write(args.out, items)
    print(f"wrote {len(items)} items to {args.out}")


if __name__ == "__main__":
    main()
