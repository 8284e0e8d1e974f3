"""Record the pre-trained backbone of lessons 07-09 (their CPU profile) in results/.

Trains (or reads back, if complete) the run in ``--run`` (default runs/cpu-pretrain), then writes
results/checkpoints/cpu-pretrain-resnet12.pt (weights only) and results/pretrained/cpu-resnet12.json
(command, machine, date, wall time, per-epoch metrics)::

    OMP_NUM_THREADS=1 python benchmarks/cpu_pretrain.py
"""
from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone
from pathlib import Path

import torch

from mtl.course import compare, recorded
from mtl.engine.checkpoint import LAST, export_weights
from mtl.engine.train import train
from mtl.io import atomic_write_text

COMMAND = "OMP_NUM_THREADS=1 python benchmarks/cpu_pretrain.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/cpu-pretrain", help="run folder (default runs/cpu-pretrain)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = recorded.pretrain_config("omniglot", classes=150, channels=(16, 32, 64, 128), epochs=4, batch_size=64)
    run = Path(args.run)
    result = train(config, out=run, resume=(run / LAST).is_file(), progress=False)
    recorded.WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    recorded.RECORD.parent.mkdir(parents=True, exist_ok=True)
    export_weights(run / LAST, recorded.WEIGHTS, force=True)
    record = {"provenance": {"command": COMMAND, "hardware": compare.hardware(result.threads),
                             "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "steps": result.steps},
              "wall_time_s": result.wall_time_s, "history": result.history}
    atomic_write_text(recorded.RECORD, json.dumps(record, indent=2) + "\n")
    print(f"wrote {recorded.WEIGHTS} and {recorded.RECORD}")


if __name__ == "__main__":
    main()
