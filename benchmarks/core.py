"""Core benchmark: one second- or first-order meta-step of MAML, by mtl and by its peers.

    python benchmarks/core.py                                  # the 14-row table, this device
    python benchmarks/core.py --device cuda --json runs/bench/core-cuda.json
    python benchmarks/core.py --baseline /tmp/mtl-old          # also time another checkout's mtl

Each configuration (``CONFIGS``: Omniglot 5-way 1-shot at meta-batch 8 and 32 with 1 and 5 inner
steps, Omniglot 20-way 1-shot, mini-ImageNet Conv4-32 5-way 1-shot and 5-shot; 15 queries per
class; random images), in each order, is timed for these implementations, all on one Conv4 of
standard torch layers (``--model mtl``: ``mtl.models.Conv4``):

- ``mtl``: ``MAML(model, ...).meta_gradient(batch)`` with the default strategy (what training runs);
- ``maml_loss``: ``mtl.maml_loss(...).backward()`` with the default strategy (the function path);
- peers, each written here the way its users write it, one task at a time with a backward per
  task: ``l2l`` (learn2learn's technique: clone the module, write each adapted tensor into the
  clone's parameter slots, call the ordinary forward), ``functional`` (``functional_call`` +
  ``torch.autograd.grad``), ``higher`` (the library, as its README does it);
- ``floor``: the same network doing the same number of forward+backward passes on the B tasks'
  images merged into one batch (what a meta-step would cost if batching tasks were free);
- ``baseline`` (with ``--baseline DIR``): ``maml_loss(...).backward()`` of the mtl found in DIR (a
  checkout of another commit), run in a worker process.

Timing is interleaved: after warm-up, every round runs one meta-step of each implementation, so a
change of load reaches all of them alike; a row reports the median over rounds, and the ratios are
taken round by round. On CUDA one more step per implementation records peak memory. The JSON
(``--json``) is rewritten after every configuration; the Markdown table is printed at the end.
Time on an otherwise idle machine: on a CPU shared with other jobs, torch's OpenMP threads wait for
each other by spinning and a step can take tens of times as long (``OMP_NUM_THREADS=1`` limits it).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

#: name -> (channels, ways, shots, filters, image side, meta-batch, inner lr, inner steps)
CONFIGS = {
    "omniglot-5w1s-b8-s1": (1, 5, 1, 64, 28, 8, 0.4, 1),
    "omniglot-5w1s-b8-s5": (1, 5, 1, 64, 28, 8, 0.4, 5),
    "omniglot-5w1s-b32-s1": (1, 5, 1, 64, 28, 32, 0.4, 1),
    "omniglot-5w1s-b32-s5": (1, 5, 1, 64, 28, 32, 0.4, 5),
    "omniglot-20w1s-b16-s5": (1, 20, 1, 64, 28, 16, 0.1, 5),
    "miniimagenet-5w1s-b4-s5": (3, 5, 1, 32, 84, 4, 0.01, 5),
    "miniimagenet-5w5s-b2-s5": (3, 5, 5, 32, 84, 2, 0.01, 5),
}
QUERIES = 15
PEERS = ("l2l", "functional", "higher")
IMPLEMENTATIONS = ("mtl", "maml_loss", *PEERS, "floor")


# ----------------------------------------------------------------------------- the step functions

def standard_conv4(channels: int, ways: int, filters: int, side: int) -> nn.Module:
    """(Conv2d 3x3, BatchNorm2d without running statistics, ReLU, MaxPool2d 2) x 4, Flatten, Linear."""
    layers, c = [], channels
    for _ in range(4):
        layers += [nn.Conv2d(c, filters, 3, padding=1),
                   nn.BatchNorm2d(filters, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2)]
        c = filters
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(filters * max(side // 16, 1) ** 2, ways))


def setup(config: str, device: torch.device, model_kind: str, meta_batch: int | None) -> tuple:
    """A fresh network (seed 0) and random tasks ``(sx, sy, qx, qy)`` for ``config``."""
    channels, ways, shots, filters, side, batch, _, _ = CONFIGS[config]
    batch = meta_batch or batch
    torch.manual_seed(0)
    if model_kind == "mtl":
        from mtl.models import Conv4

        model = Conv4(channels, ways, hidden=filters, image_size=side)
    else:
        model = standard_conv4(channels, ways, filters, side)
    model = model.to(device)
    sx = torch.rand(batch, ways * shots, channels, side, side, device=device)
    qx = torch.rand(batch, ways * QUERIES, channels, side, side, device=device)
    sy = torch.arange(ways, device=device).repeat_interleave(shots).expand(batch, -1)
    qy = torch.arange(ways, device=device).repeat_interleave(QUERIES).expand(batch, -1)
    return model, (sx, sy, qx, qy)


def step_fn(impl: str, model: nn.Module, tasks: tuple, config: str,
            first_order: bool) -> Callable[[], None]:
    """One meta-step of ``impl`` (it accumulates the meta-gradient into ``model``'s ``.grad``)."""
    lr, steps = CONFIGS[config][6], CONFIGS[config][7]
    sx, sy, qx, qy = tasks
    if impl == "mtl":
        from mtl.algorithms import MAML
        from mtl.data.episodes import TaskBatch

        learner, batch = MAML(model, inner_steps=steps, inner_lr=lr, first_order=first_order), \
            TaskBatch(*tasks)
        return lambda: learner.meta_gradient(batch)
    if impl in ("maml_loss", "baseline"):  # the baseline is the same call of another mtl
        import mtl

        return lambda: mtl.maml_loss(model, dict(model.named_parameters()), *tasks, steps=steps,
                                     lr=lr, first_order=first_order).backward()
    if impl == "floor":
        support, query, support_y, query_y = sx.flatten(0, 1), qx.flatten(0, 1), sy.flatten(), qy.flatten()

        def floor() -> None:
            for _ in range(steps):
                F.cross_entropy(model(support), support_y).backward()
            F.cross_entropy(model(query), query_y).backward()
        return floor
    peers = {"l2l": _l2l_step, "functional": _functional_step, "higher": _higher_step}
    if impl not in peers:
        raise ValueError(f"unknown implementation {impl!r}; one of {', '.join(IMPLEMENTATIONS)}")
    return peers[impl](model, tasks, lr, first_order, steps)


def _clone(module: nn.Module) -> nn.Module:
    """A structural copy of ``module`` sharing its tensors, with parameter slots of its own, into
    which adapted (non-leaf) tensors are written for the ordinary ``forward`` to use."""
    copy_ = object.__new__(type(module))
    copy_.__dict__ = dict(module.__dict__)
    copy_._parameters = dict(module._parameters)
    copy_._modules = {name: _clone(child) for name, child in module._modules.items()}
    return copy_


def _l2l_step(model: nn.Module, tasks: tuple, lr: float, first_order: bool,
              steps: int) -> Callable[[], None]:
    """Clone the module per task, adapt by writing into its parameters, backward per task."""
    sx, sy, qx, qy = tasks
    slots = [(module_name, name) for module_name, module in model.named_modules()
             for name in module._parameters]
    initial = [model.get_submodule(m)._parameters[n] for m, n in slots]

    def step() -> None:
        for t in range(sx.shape[0]):
            clone = _clone(model)
            holders = [clone.get_submodule(m)._parameters for m, _ in slots]
            fast = list(initial)
            for _ in range(steps):
                loss = F.cross_entropy(clone(sx[t]), sy[t])
                grads = torch.autograd.grad(loss, fast, create_graph=not first_order)
                fast = [w - lr * g for w, g in zip(fast, grads)]
                for holder, (_, name), w in zip(holders, slots, fast):
                    holder[name] = w
            (F.cross_entropy(clone(qx[t]), qy[t]) / sx.shape[0]).backward()
    return step


def _functional_step(model: nn.Module, tasks: tuple, lr: float, first_order: bool,
                     steps: int) -> Callable[[], None]:
    """A plain per-task ``functional_call`` + ``autograd.grad`` loop, backward per task."""
    from torch.func import functional_call

    sx, sy, qx, qy = tasks
    params = dict(model.named_parameters())

    def step() -> None:
        for t in range(sx.shape[0]):
            fast = dict(params)
            for _ in range(steps):
                loss = F.cross_entropy(functional_call(model, fast, (sx[t],)), sy[t])
                grads = torch.autograd.grad(loss, list(fast.values()), create_graph=not first_order)
                fast = {n: w - lr * g for (n, w), g in zip(fast.items(), grads)}
            (F.cross_entropy(functional_call(model, fast, (qx[t],)), qy[t]) / sx.shape[0]).backward()
    return step


def _higher_step(model: nn.Module, tasks: tuple, lr: float, first_order: bool,
                 steps: int) -> Callable[[], None]:
    """``higher.innerloop_ctx`` per task, backward per task (its README's MAML)."""
    import higher

    sx, sy, qx, qy = tasks
    inner_opt = torch.optim.SGD(model.parameters(), lr=lr)
    params = list(model.parameters())

    def step() -> None:
        for t in range(sx.shape[0]):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=not first_order) as (fmodel, diffopt):
                for _ in range(steps):
                    diffopt.step(F.cross_entropy(fmodel(sx[t]), sy[t]))
                loss = F.cross_entropy(fmodel(qx[t]), qy[t]) / sx.shape[0]
                if first_order:  # the gradient at the fast weights, added to the initial ones
                    for p, g in zip(params, torch.autograd.grad(loss, list(fmodel.parameters()))):
                        p.grad = g if p.grad is None else p.grad + g
                else:
                    loss.backward()
    return step


# ----------------------------------------------------------------------------- timing

class _Local:
    """An implementation timed in this process."""

    def __init__(self, impl: str, config: str, order: str, device: torch.device, model_kind: str,
                 meta_batch: int | None):
        self.device = device
        self.model, tasks = setup(config, device, model_kind, meta_batch)
        self.step = step_fn(impl, self.model, tasks, config, order == "first")

    def time(self) -> float:
        """Seconds of one meta-step (synchronised on CUDA)."""
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda: None)
        self.model.zero_grad(set_to_none=True)
        sync()
        start = time.perf_counter()
        self.step()
        sync()
        return time.perf_counter() - start

    def peak_mib(self) -> float | None:
        if self.device.type != "cuda":
            return None
        torch.cuda.reset_peak_memory_stats(self.device)
        self.time()
        return torch.cuda.max_memory_allocated(self.device) / 2 ** 20

    def close(self) -> None:
        pass


class _Worker:
    """The ``baseline`` implementation: this script in ``--worker`` mode with another mtl first on
    the path, answering one line of JSON per request."""

    def __init__(self, path: Path, config: str, order: str, device: torch.device, model_kind: str,
                 meta_batch: int | None):
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")]))
        self.process = subprocess.Popen([sys.executable, __file__, "--worker"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True, env=env, cwd=path)
        self._ask({"config": config, "order": order, "device": str(device), "model": model_kind,
                   "meta_batch": meta_batch})

    def _ask(self, request: dict) -> dict:
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        answer = json.loads(self.process.stdout.readline() or '{"error": "the worker died"}')
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return answer

    def time(self) -> float:
        return self._ask({"do": "time"})["seconds"]

    def peak_mib(self) -> float | None:
        return self._ask({"do": "peak"})["peak_mib"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)


def _serve() -> None:
    """``--worker``: set up ``baseline`` as the first request says, then answer timing requests."""
    local = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if local is None:
                local = _Local("baseline", request["config"], request["order"],
                               torch.device(request["device"]), request["model"], request["meta_batch"])
                answer = {"ready": True, "mtl": str(Path(sys.modules["mtl"].__file__).parent)} \
                    if "mtl" in sys.modules else {"ready": True}
            elif request["do"] == "time":
                answer = {"seconds": local.time()}
            else:
                answer = {"peak_mib": local.peak_mib()}
        except Exception as error:  # noqa: BLE001 - reported to the parent, which records it
            answer = {"error": f"{type(error).__name__}: {str(error)[:300]}"}
        print(json.dumps(answer), flush=True)


def time_config(config: str, order: str, impls: list[str], args: argparse.Namespace) -> list[dict]:
    """Warm-up, then ``args.rounds`` rounds of one meta-step per implementation: a row per impl."""
    device = torch.device(args.device)
    batch = args.meta_batch or CONFIGS[config][5]
    rows = {impl: {"config": config, "order": order, "impl": impl, "meta_batch": batch}
            for impl in impls}
    runners = {}
    for impl in impls:
        try:
            settings = (config, order, device, args.model, args.meta_batch)
            runner = _Worker(args.baseline, *settings) if impl == "baseline" else _Local(impl, *settings)
            for _ in range(args.warmup):
                runner.time()
            runners[impl] = runner
        except Exception as error:  # noqa: BLE001 - one row of many: record and go on
            rows[impl]["error"] = f"{type(error).__name__}: {str(error)[:300]}"
    times: dict[str, list[float]] = {impl: [] for impl in runners}
    for _ in range(args.rounds):
        for impl, runner in runners.items():
            times[impl].append(runner.time())
    for impl, runner in runners.items():
        seconds = statistics.median(times[impl])
        rows[impl].update(ms=1000 * seconds, tasks_per_s=batch / seconds, peak_mib=runner.peak_mib(),
                          all_ms=[round(1000 * t, 2) for t in times[impl]])
        runner.close()
    return list(rows.values())


# ----------------------------------------------------------------------------- report

def ratios(rows: list[dict]) -> dict:
    """Per ``config/order``, round by round (the rounds are interleaved, so each ratio compares
    steps taken under the same load): the fastest peer's ms over ``mtl``'s (above 1: mtl is
    faster), ``baseline``'s over ``mtl``'s, and ``mtl``'s over the floor's (1: batching for free).
    Each as ``{"median", "min", "max", "rounds"}``."""
    out: dict = {}
    for config, order in dict.fromkeys((r["config"], r["order"]) for r in rows):
        times = {r["impl"]: r["all_ms"] for r in rows
                 if (r["config"], r["order"]) == (config, order) and r.get("all_ms")}
        if "mtl" not in times:
            continue
        ours = times["mtl"]
        entry: dict = {}
        peers = [times[p] for p in PEERS if p in times]
        if peers:
            entry["fastest_peer_over_mtl"] = _summary([min(p[i] for p in peers) / ours[i]
                                                       for i in range(len(ours))])
        if "baseline" in times:
            entry["baseline_over_mtl"] = _summary([b / m for b, m in zip(times["baseline"], ours)])
        if "floor" in times:
            entry["mtl_over_floor"] = _summary([m / f for m, f in zip(ours, times["floor"])])
        out[f"{config}/{order}"] = entry
    return out


def _summary(values: list[float]) -> dict:
    return {"median": round(statistics.median(values), 3), "min": round(min(values), 3),
            "max": round(max(values), 3), "rounds": len(values)}


def markdown_table(report: dict) -> str:
    """One line per configuration and order: median ms per implementation and the ratios."""
    rows = report["rows"]
    impls = [i for i in (*IMPLEMENTATIONS, "baseline") if any(r["impl"] == i and "ms" in r for r in rows)]
    head = ["config", "order", *[f"{i} ms" for i in impls], "fastest peer / mtl (range)",
            "baseline / mtl", "mtl / floor"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(impls) + 3)]
    table = ratios(rows)
    for key, entry in table.items():
        config, order = key.split("/")
        cells = []
        for impl in impls:
            row = next((r for r in rows if (r["config"], r["order"], r["impl"]) == (config, order, impl)), {})
            cells.append(f"{row['ms']:,.1f}" if "ms" in row else "failed" if row else "-")

        def fmt(name: str, with_range: bool = False, entry: dict = entry) -> str:
            s = entry.get(name)
            if s is None:
                return "-"
            return f"{s['median']:.2f}" + (f" ({s['min']:.2f}-{s['max']:.2f})" if with_range else "")
        lines.append(f"| {config} | {order} | " + " | ".join(cells) + f" | {fmt('fastest_peer_over_mtl', True)}"
                     f" | {fmt('baseline_over_mtl', True)} | {fmt('mtl_over_floor')} |")
    errors = [f"- {r['config']} {r['order']} {r['impl']}: {r['error']}" for r in rows if "error" in r]
    return "\n".join(lines + ([""] + errors if errors else []))


def _machine(device: torch.device) -> dict:
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "cpu_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "platform": platform.platform()}
    if device.type == "cuda":
        meta["card"] = torch.cuda.get_device_name(device)
    return meta


def _write(path: Path | None, report: dict) -> None:
    if path is None:
        return
    from mtl.io import atomic_write_text

    atomic_write_text(path, json.dumps(report, indent=1))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--orders", nargs="+", choices=["second", "first"], default=["second", "first"])
    parser.add_argument("--impls", nargs="+", choices=list(IMPLEMENTATIONS), default=list(IMPLEMENTATIONS))
    parser.add_argument("--baseline", type=Path, default=None,
                        help="a checkout of another commit: its maml_loss is timed as 'baseline'")
    parser.add_argument("--model", choices=["standard", "mtl"], default="standard")
    parser.add_argument("--meta-batch", type=int, default=None, help="override every meta-batch")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per implementation")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds")
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _serve()
        return 0
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device here; pass --device cpu")
    if args.baseline is not None and not (args.baseline / "mtl" / "__init__.py").is_file():
        parser.error(f"--baseline {args.baseline} holds no mtl/ package (give a checkout's root)")
    impls = args.impls + (["baseline"] if args.baseline else [])
    report = {"meta": _machine(torch.device(args.device)), "settings": {
        "configs": {c: dict(zip(("channels", "ways", "shots", "filters", "side", "meta_batch",
                                 "inner_lr", "inner_steps"), CONFIGS[c])) for c in args.configs},
        "queries": QUERIES, "model": args.model, "warmup": args.warmup, "rounds": args.rounds,
        "meta_batch_override": args.meta_batch,
        "baseline": str(args.baseline) if args.baseline else None}, "rows": []}
    started = time.perf_counter()
    for config in args.configs:
        for order in args.orders:
            print(f"[{time.perf_counter() - started:6.0f} s] {config} {order}-order", flush=True)
            report["rows"] += time_config(config, order, impls, args)
            report["ratios"] = ratios(report["rows"])
            _write(args.json, report)
    report["meta"]["total_s"] = round(time.perf_counter() - started, 1)
    _write(args.json, report)
    print(markdown_table(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
