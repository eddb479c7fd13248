r"""Data throughput: litdata streaming tokens/s of the training loader against training's consumption.

The loader is the one ``configs/wikitext_ablation.yaml`` trains with (``TextDataModule``:
litdata ``StreamingDataset`` + ``TokensLoader(block_size=L)`` + ``StreamingDataLoader``, shuffled,
collated to ``LongTensor[B, L]``), built through the ``mdlm`` CLI. For each ``num_workers`` it
iterates ``batches`` batches (restarting epochs as needed) and reports

* ``first_batch_s``: from creating the iterator to the first batch (worker start-up, index load);
* ``tokens_per_s``: ``B · L`` × batches after the first ÷ their time (steady state), median of repeats.

Headroom = loader tokens/s ÷ the fastest training rate measured by ``train_throughput.py``
(its JSON, if present): above 1 the loader is not the bottleneck; training at ``r`` tokens/s
spends ``r / loader rate`` of its time waiting for data when loading is not overlapped
(``num_workers=0``).

    python benchmarks/data_throughput.py
    python benchmarks/data_throughput.py --smoke
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a file (`python benchmarks/x.py`): make the repository root importable, as `-m` does
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks._common import REPO, RESULTS, fmt, machine_line, machine_record, markdown_table, median, write_results  # noqa: E402

CONFIG = "configs/wikitext_ablation.yaml"


def build_datamodule(extra: list[str]) -> Any:
    """The config's data module (prepared and set up for fit), via the CLI."""
    from mdlm.cli import build_cli

    cli = build_cli(["--config", str(REPO / CONFIG), *extra], run=False)
    dm = cli.datamodule
    dm.prepare_data()
    dm.setup("fit")
    return dm


def time_loader(dm: Any, batches: int) -> dict[str, float]:
    """Iterate ``batches`` training batches (new epochs as needed); first-batch latency and steady tokens/s."""
    seen = tokens = 0
    t0 = time.perf_counter()
    first = steady_start = None
    while seen < batches:
        for batch in dm.train_dataloader():
            seen += 1
            if first is None:
                first = time.perf_counter() - t0
                steady_start = time.perf_counter()
            else:
                tokens += batch["input_ids"].numel()
            if seen >= batches:
                break
    elapsed = time.perf_counter() - steady_start
    return {"first_batch_s": first, "tokens_per_s": tokens / elapsed if elapsed > 0 else float("inf"), "batches": seen}


def training_rates(path: Path) -> dict[str, float]:
    """``preset/precision -> trainer tokens/s`` from a train_throughput JSON (empty when absent)."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {f"{r['preset']}/{r['precision']}": r["trainer_tokens_per_s"] for r in data.get("results", [])}


def markdown(data: dict[str, Any]) -> str:
    fastest = data["fastest_training_tokens_per_s"]
    rows = [
        [r["num_workers"], fmt(r["tokens_per_s"]), fmt(r["first_batch_s"], 2),
         "-" if not fastest else f"{r['tokens_per_s'] / fastest:,.0f}×"]
        for r in data["results"]
    ]
    s = data["settings"]
    train_txt = (
        f"fastest training rate measured ({data['fastest_training_key']}): {fastest:,.0f} tok/s"
        if fastest else "no training measurement found"
    )
    return "\n".join([
        "### Data throughput: litdata streaming loader vs training consumption",
        "",
        machine_line(data["machine"]),
        f"`{CONFIG}` train loader, batch {s['batch_size']} × block {s['block_length']}, {s['batches']} batches per run, "
        f"{s['repeats']} repeats, medians; {train_txt}.",
        "",
        markdown_table(["num_workers", "loader tok/s", "first batch s", "headroom vs fastest training"], rows),
    ]) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--batches", type=int, default=200)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--train-results", type=Path, default=RESULTS / "train_throughput.json")
    p.add_argument("--smoke", action="store_true", help="workers 0, 5 batches, 1 repeat")
    p.add_argument("--out", type=Path, default=None, help="JSON (default benchmarks/results/data_throughput.json)")
    args = p.parse_args(argv)
    if args.smoke:
        args.workers, args.batches, args.repeats = [0], 5, 1
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "data_throughput_smoke.json" if args.smoke else RESULTS / "data_throughput.json"
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.chdir(REPO)
    machine = machine_record()
    results = []
    dm = None
    for workers in args.workers:
        dm = build_datamodule([f"--data.init_args.num_workers={workers}"])
        time_loader(dm, 2)  # warm the page cache and the index
        runs = [time_loader(dm, args.batches) for _ in range(args.repeats)]
        results.append({
            "num_workers": workers,
            "tokens_per_s": median([r["tokens_per_s"] for r in runs]),
            "first_batch_s": median([r["first_batch_s"] for r in runs]),
            "runs": runs,
        })
        print(f"  num_workers={workers}: {results[-1]['tokens_per_s']:,.0f} tok/s", flush=True)
    rates = training_rates(args.train_results)
    key = max(rates, key=rates.get) if rates else None
    machine["loadavg_end"] = list(os.getloadavg())
    data = {
        "benchmark": "data_throughput",
        "settings": {"batches": args.batches, "repeats": args.repeats, "batch_size": dm.batch_size, "block_length": dm.block_length},
        "machine": machine,
        "results": results,
        "training_tokens_per_s": rates,
        "fastest_training_key": key,
        "fastest_training_tokens_per_s": rates.get(key) if key else None,
    }
    write_results(args.out, data, markdown)
    return data


if __name__ == "__main__":
    main()
