"""`python -m mtl bench`: meta-steps per second and peak memory of the inner/outer loops.

One run times, on random data, each configuration of ``CONFIGS`` (Omniglot 5-way 1-shot at
meta-batch 8 and 32 with 1 and 5 inner steps, Omniglot 20-way 1-shot, mini-ImageNet Conv4-32
5-way 1-shot and 5-shot; 15 queries per class) in each order (second, first), on a Conv4 built
from standard torch layers (``--model mtl``: ``mtl.models.Conv4``), with:

- ``auto`` (the default strategy), ``loop``, ``shared``, ``vmap`` and the channels-last variants:
  ``mtl.maml_loss(...).backward()`` with that strategy (``auto``'s one-time trial is in its
  warm-up, its timings in the row);
- peers, each written here the way its users write it, one task at a time with a backward per
  task: ``l2l`` (learn2learn's technique: clone the module, write each adapted tensor into the
  clone's parameters, call the ordinary forward), ``functional`` (``torch.func.functional_call`` +
  ``torch.autograd.grad``), ``higher`` (the library, 0.2.1, as its README does it);
- ``floor``: the same Conv4 doing the same number of forward+backward passes (one per inner step
  on the B tasks' support images merged into one batch, one on the merged query images): what a
  meta-step would cost if batching tasks were free;
- with ``--levers``: ``vmap`` with bf16 autocast (fp32 master weights) and channels-last;
  with ``--compile``: ``torch.compile`` of the vmap meta-step (each where it runs).

Each row: warm-up, then the median of timed meta-steps (synchronised), peak GPU memory; a row
that fails records its error and the run goes on. ``--interleave`` times a configuration's
implementations round-robin (one step each per round) and records the process CPU time too: on a
shared CPU this keeps the ratios fair when the load changes during the run. The JSON is rewritten
after every row. ``ratios`` compares ``auto`` with the fastest peer and with the floor.
``--data`` also runs the episode-sampler benchmark ``mtl.data.bench``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

import mtl
from mtl.models import Conv4

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
STRATEGY_ROWS = ("auto", "loop", "shared", "vmap", "loop+channels_last", "shared+channels_last")
PEERS = ("l2l", "functional", "higher")
IMPLEMENTATIONS = STRATEGY_ROWS + PEERS + ("floor",)
DEFAULT_IMPLS = ("auto", "loop", "shared", "l2l", "functional", "higher", "floor")
LEVERS = ("vmap+bf16", "vmap+channels_last")
COMPILE = ("vmap+compile",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--json", type=Path, default=None, help="write the results here (JSON)")
    parser.add_argument("--quick", action="store_true",
                        help="1 warm-up + 3 timed steps, Omniglot 5w1s meta-batch 8 only (a smoke test)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None)
    parser.add_argument("--orders", nargs="+", choices=["second", "first"],
                        default=["second", "first"])
    parser.add_argument("--impls", nargs="+", choices=list(IMPLEMENTATIONS + LEVERS + COMPILE),
                        default=None, help="implementations to time (default: "
                                           f"{' '.join(DEFAULT_IMPLS)})")
    parser.add_argument("--model", choices=["standard", "mtl"], default="standard",
                        help="Conv4 of standard torch layers (nn.BatchNorm2d without running "
                             "statistics; default) or mtl.models.Conv4")
    parser.add_argument("--levers", action="store_true",
                        help="also time vmap with bf16 autocast (fp32 master weights), channels-last")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile of the vmap meta-step (slow to compile)")
    parser.add_argument("--interleave", action="store_true",
                        help="time the implementations of a configuration round-robin, one step "
                             "each per round (fairer on a shared, noisy CPU; no peak memory)")
    parser.add_argument("--meta-batch", type=int, default=None,
                        help="override every configuration's meta-batch (CPU runs)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps (default 3)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed steps (default 10, fewer once a row has run 3 s; at least 3)")
    parser.add_argument("--budget-s", type=float, default=240.0,
                        help="skip the rows that would start after this many seconds (240)")
    parser.add_argument("--data", action="store_true",
                        help="also run the episode-sampler benchmark (mtl.data.bench)")


def run(args: argparse.Namespace) -> int:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device here; run with --device cpu", file=sys.stderr)
        return 2
    configs = args.configs or (["omniglot-5w1s-b8-s1"] if args.quick else list(CONFIGS))
    base = list(args.impls or DEFAULT_IMPLS)
    global MODEL
    MODEL = args.model
    levers = [i for i in LEVERS if i not in base] if args.levers else []
    levers += [i for i in COMPILE if i not in base] if args.compile else []
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 10)
    report = {"meta": _machine(device), "settings": {
        "configs": {c: dict(zip(("channels", "ways", "shots", "filters", "side", "meta_batch",
                                 "inner_lr", "inner_steps"), CONFIGS[c])) for c in configs},
        "queries": QUERIES, "model": args.model, "warmup": warmup, "repeats": repeats,
        "meta_batch_override": args.meta_batch}, "rows": []}
    started = time.perf_counter()
    if args.interleave:
        plan = [(c, o, tuple(group)) for group in (base, levers) if group for c in configs
                for o in args.orders]
    else:
        plan = [(c, o, i) for group in (base, levers) for c in configs for o in args.orders
                for i in group]
    for config, order, impl in plan:
        if isinstance(impl, tuple):  # --interleave: one group of rows
            print(f"[{time.perf_counter() - started:6.1f}s] {config} {order}-order "
                  f"{', '.join(impl)} (round-robin) ...", flush=True)
            report["rows"] += _time_group(config, order, impl, device, warmup, repeats,
                                          args.meta_batch)
            report["ratios"] = ratios(report["rows"])
            _write(args.json, report)
            continue
        row = {"config": config, "order": order, "impl": impl}
        elapsed = time.perf_counter() - started
        print(f"[{elapsed:6.1f}s] {config} {order}-order {impl} ...", end=" ", flush=True)
        if elapsed > args.budget_s:
            row["error"] = f"skipped: over the --budget-s of {args.budget_s:.0f} s"
            print("skipped (time budget)")
        else:
            try:
                row.update(_time_row(config, order == "first", impl, device, warmup, repeats,
                                     args.meta_batch))
                print(f"{row['ms']:.1f} ms/step, {row['tasks_per_s']:.1f} tasks/s"
                      + (f", peak {row['peak_mib']:.0f} MiB" if row["peak_mib"] else ""),
                      flush=True)
            except Exception as error:  # noqa: BLE001 - record and go on (one run, many rows)
                row["error"] = _error_text(error)
                print("FAILED:", row["error"], flush=True)
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        report["rows"].append(row)
        report["ratios"] = ratios(report["rows"])
        _write(args.json, report)
    if args.data:
        report["data"] = _data_bench(device, args.quick)
        _write(args.json, report)
    report["meta"]["total_s"] = round(time.perf_counter() - started, 1)
    _write(args.json, report)
    print(markdown_table(report))
    return 0


# ----------------------------------------------------------------------------- one row

def _time_row(config: str, first_order: bool, impl: str, device: torch.device, warmup: int,
              repeats: int, meta_batch: int | None) -> dict:
    model, tasks, lr, batch = _setup(config, device, meta_batch)
    step = _step_fn(impl, model, tasks, lr, first_order, CONFIGS[config][7])
    seconds, peak = _measure(step, model, device, warmup, repeats)
    return _figures(impl, batch, seconds, peak)


def _figures(impl: str, batch: int, seconds: float, peak_mib: float | None) -> dict:
    """A row's figures from the median seconds per meta-step of ``batch`` tasks."""
    row = {"meta_batch": batch, "ms": 1000 * seconds, "meta_steps_per_s": 1 / seconds,
           "tasks_per_s": batch / seconds, "peak_mib": peak_mib, "strategy_chosen": None}
    if impl == "auto":
        from mtl.core.inner import describe_auto_choice, last_auto_choice

        record = last_auto_choice()
        row["strategy_chosen"] = record["chosen"] if record else None
        row["auto_trial_ms"] = record["timings_ms"] if record else None
        row["auto_log"] = describe_auto_choice(record)
    return row


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error)[:300]}"


MODEL = "standard"  # --model


def standard_conv4(channels: int, ways: int, filters: int, side: int) -> torch.nn.Module:
    """Conv4 of standard torch layers: (Conv2d 3x3, BatchNorm2d without running statistics,
    ReLU, MaxPool2d 2) x 4, Flatten, Linear (the peers' usual model)."""
    from torch import nn

    layers, c = [], channels
    for _ in range(4):
        layers += [nn.Conv2d(c, filters, 3, padding=1),
                   nn.BatchNorm2d(filters, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2)]
        c = filters
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(filters * max(side // 16, 1) ** 2, ways))


def _setup(config: str, device: torch.device, meta_batch: int | None) -> tuple:
    """A fresh Conv4 (seed 0) and random tasks ``(sx, sy, qx, qy)`` for ``config``."""
    channels, ways, shots, filters, side, batch, lr, _ = CONFIGS[config]
    batch = meta_batch or batch
    torch.manual_seed(0)
    if MODEL == "mtl":
        model = Conv4(channels, ways, hidden=filters, image_size=side)
    else:
        model = standard_conv4(channels, ways, filters, side)
    model = model.to(device)
    sx = torch.rand(batch, ways * shots, channels, side, side, device=device)
    qx = torch.rand(batch, ways * QUERIES, channels, side, side, device=device)
    sy = torch.arange(ways, device=device).repeat_interleave(shots).expand(batch, -1)
    qy = torch.arange(ways, device=device).repeat_interleave(QUERIES).expand(batch, -1)
    return model, (sx, sy, qx, qy), lr, batch


def _step_fn(impl: str, model: torch.nn.Module, tasks: tuple, lr: float,
             first_order: bool, steps: int) -> Callable[[], None]:
    sx, sy, qx, qy = tasks
    settings = dict(steps=steps, lr=lr, first_order=first_order)
    if impl in STRATEGY_ROWS:
        return lambda: mtl.maml_loss(model, dict(model.named_parameters()), *tasks,
                                     strategy=impl, **settings).backward()
    if impl == "higher":
        return _higher_step(model, tasks, lr, first_order, steps)
    if impl == "l2l":
        return _l2l_step(model, tasks, lr, first_order, steps)
    if impl == "functional":
        return _functional_step(model, tasks, lr, first_order, steps)
    if impl == "floor":
        support, query = sx.flatten(0, 1), qx.flatten(0, 1)
        support_y, query_y = sy.flatten(), qy.flatten()

        def floor() -> None:
            for _ in range(steps):
                F.cross_entropy(model(support), support_y).backward()
            F.cross_entropy(model(query), query_y).backward()
        return floor
    if impl == "vmap+bf16":
        def bf16() -> None:
            with torch.autocast(sx.device.type, dtype=torch.bfloat16):
                loss = mtl.maml_loss(model, dict(model.named_parameters()), *tasks,
                                     strategy="vmap", **settings)
            loss.backward()
        return bf16
    if impl == "vmap+channels_last":
        model.to(memory_format=torch.channels_last)
        cl = [x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(
            0, x.shape[:2]) for x in (sx, qx)]
        return lambda: mtl.maml_loss(model, dict(model.named_parameters()), cl[0], sy, cl[1], qy,
                                     strategy="vmap", **settings).backward()
    if impl == "vmap+compile":
        compiled = torch.compile(lambda p: mtl.maml_loss(model, p, *tasks, strategy="vmap",
                                                         **settings))
        return lambda: compiled(dict(model.named_parameters())).backward()
    raise ValueError(impl)


def _clone(module: torch.nn.Module) -> torch.nn.Module:
    """A structural copy of ``module`` sharing its tensors, with parameter slots of its own.

    learn2learn's technique (written here, not its code): the copy's ``_parameters`` entries are
    then overwritten with any tensors (the adapted, non-leaf ones), and its ordinary ``forward``
    uses them, graph and all.
    """
    copy_ = object.__new__(type(module))
    copy_.__dict__ = dict(module.__dict__)
    copy_._parameters = dict(module._parameters)
    copy_._modules = {name: _clone(child) for name, child in module._modules.items()}
    return copy_


def _l2l_step(model: torch.nn.Module, tasks: tuple, lr: float, first_order: bool,
              steps: int) -> Callable[[], None]:
    """The peer: clone the module per task, adapt by writing into its parameters, backward per task."""
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


def _functional_step(model: torch.nn.Module, tasks: tuple, lr: float, first_order: bool,
                     steps: int) -> Callable[[], None]:
    """The peer: a plain per-task ``functional_call`` + ``autograd.grad`` loop, backward per task."""
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


def _higher_step(model: torch.nn.Module, tasks: tuple, lr: float, first_order: bool,
                 steps: int) -> Callable[[], None]:
    """The peer: ``higher.innerloop_ctx`` per task, backward per task (its README's MAML)."""
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
                if first_order:  # gradient at the fast weights, added to the initial ones
                    fast = fmodel.parameters()
                    for p, g in zip(params, torch.autograd.grad(loss, list(fast))):
                        p.grad = g if p.grad is None else p.grad + g
                else:
                    loss.backward()
    return step


def _measure(step: Callable[[], None], model: torch.nn.Module, device: torch.device,
             warmup: int, repeats: int) -> tuple[float, float | None]:
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    warm_start = time.perf_counter()
    for done in range(warmup):  # at least one, fewer if the steps are slow (compilation aside)
        model.zero_grad(set_to_none=True)
        step()
        sync()
        if done >= 1 and time.perf_counter() - warm_start > 5.0:
            break
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    while len(times) < repeats and (len(times) < 3 or sum(times) < 3.0):
        model.zero_grad(set_to_none=True)
        sync()
        start = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return statistics.median(times), peak


def _time_group(config: str, order: str, impls: tuple[str, ...], device: torch.device,
                warmup: int, repeats: int, meta_batch: int | None) -> list[dict]:
    """Round-robin timing: every round runs one meta-step of each implementation."""
    steps, rows = {}, {}
    for impl in impls:
        rows[impl] = {"config": config, "order": order, "impl": impl}
        try:
            model, tasks, lr, batch = _setup(config, device, meta_batch)
            step = _step_fn(impl, model, tasks, lr, order == "first", CONFIGS[config][7])
            for _ in range(max(warmup, 1)):
                model.zero_grad(set_to_none=True)
                step()
            steps[impl] = (model, step)
        except Exception as error:  # noqa: BLE001
            rows[impl]["error"] = _error_text(error)
    wall = {impl: [] for impl in steps}
    cpu = {impl: [] for impl in steps}
    for _ in range(max(repeats, 3)):
        for impl, (model, step) in list(steps.items()):
            model.zero_grad(set_to_none=True)
            start, start_cpu = time.perf_counter(), time.process_time()
            try:
                step()
            except Exception as error:  # noqa: BLE001
                rows[impl]["error"] = _error_text(error)
                del steps[impl]
                continue
            wall[impl].append(time.perf_counter() - start)
            cpu[impl].append(time.process_time() - start_cpu)
    batch = meta_batch or CONFIGS[config][5]
    for impl in steps:
        rows[impl].update(_figures(impl, batch, statistics.median(wall[impl]), None),
                          cpu_ms=1000 * statistics.median(cpu[impl]),
                          all_ms=[round(1000 * t, 1) for t in wall[impl]])
        print(f"    {impl}: {rows[impl]['ms']:.1f} ms/step (cpu {rows[impl]['cpu_ms']:.0f} ms)"
              + (f"; {rows[impl]['auto_log']}" if rows[impl].get("auto_log") else ""), flush=True)
    return list(rows.values())


# ----------------------------------------------------------------------------- report

def ratios(rows: list[dict]) -> dict:
    """Per (config, order): ``auto`` against the fastest peer and the floor, and the strategies'.

    ``auto_vs_fastest_peer`` is the fastest peer's ms over auto's (above 1: auto is faster);
    ``auto_over_floor`` is auto's ms over the floor's (1 would be batching for free).
    """
    ms = {(r["config"], r["order"], r["impl"]): r["ms"] for r in rows if "ms" in r}
    out = {}
    for config, order in {(c, o) for c, o, _ in ms}:
        get = {impl: ms.get((config, order, impl)) for impl in IMPLEMENTATIONS + LEVERS + COMPILE}
        peers = {k: get[k] for k in PEERS if get[k]}
        entry: dict = {}
        if peers:
            fastest = min(peers, key=peers.get)
            entry["fastest_peer"] = fastest
        for impl, value in get.items():
            if value is None or impl in PEERS or impl == "floor":
                continue
            if peers:
                entry[f"{impl}_vs_fastest_peer"] = round(peers[fastest] / value, 3)
            if get["higher"]:
                entry[f"{impl}_speedup_vs_higher"] = round(get["higher"] / value, 3)
            if get["floor"]:
                entry[f"{impl}_over_floor"] = round(value / get["floor"], 3)
        by_round = _paired_rounds(rows, config, order)
        if by_round:
            entry["auto_vs_fastest_peer_by_round"] = by_round
        chosen = [r.get("strategy_chosen") for r in rows if r["config"] == config
                  and r["order"] == order and r["impl"] == "auto" and r.get("strategy_chosen")]
        if chosen:
            entry["auto_chose"] = chosen[0]
        out[f"{config}/{order}"] = entry
    return dict(sorted(out.items()))


def _paired_rounds(rows: list[dict], config: str, order: str) -> dict | None:
    """Round by round (``--interleave``: one step of each implementation per round, so a change of
    load reaches all of them alike): the fastest peer's ms over auto's in that round.

    ``{"median", "min", "max", "auto_faster", "rounds"}``; None without auto, peers, or rounds
    of equal count."""
    times = {r["impl"]: r.get("all_ms") for r in rows
             if r["config"] == config and r["order"] == order and r.get("all_ms")}
    peers = [times[p] for p in PEERS if p in times]
    auto = times.get("auto")
    if not auto or not peers or any(len(p) != len(auto) for p in peers):
        return None
    per_round = [min(p[i] for p in peers) / auto[i] for i in range(len(auto))]
    return {"median": round(statistics.median(per_round), 3), "min": round(min(per_round), 3),
            "max": round(max(per_round), 3), "auto_faster": sum(r > 1 for r in per_round),
            "rounds": len(per_round)}


def markdown_table(report: dict) -> str:
    """The rows as Markdown: one line per configuration and order (what benchmarks/README.md shows)."""
    impls = [i for i in IMPLEMENTATIONS + LEVERS + COMPILE
             if any(r["impl"] == i and "ms" in r for r in report["rows"])]
    head = ["config", "order", *[f"{i} ms" for i in impls], "auto chose", "auto vs fastest peer",
            "by round: median (range), auto faster", "auto / floor"]
    lines = ["| " + " | ".join(head) + " |",
             "|---|---|" + "---:|" * len(impls) + "---|---:|---:|---:|"]
    seen = []
    for r in report["rows"]:
        if (r["config"], r["order"]) not in seen:
            seen.append((r["config"], r["order"]))
    table = report.get("ratios") or ratios(report["rows"])
    for config, order in seen:
        cells = []
        for impl in impls:
            row = next((r for r in report["rows"] if (r["config"], r["order"], r["impl"]) ==
                        (config, order, impl)), None)
            cells.append("-" if row is None else f"{row['ms']:,.0f}" if "ms" in row else "failed")
        entry = table.get(f"{config}/{order}", {})
        versus = entry.get("auto_vs_fastest_peer")
        floor = entry.get("auto_over_floor")
        paired = entry.get("auto_vs_fastest_peer_by_round")
        lines.append(f"| {config} | {order} | " + " | ".join(cells) + f" | {entry.get('auto_chose', '-')} | "
                     + (f"{versus:.2f}x ({entry['fastest_peer']})" if versus else "-") + " | "
                     + (f"{paired['median']:.2f}x ({paired['min']:.2f}-{paired['max']:.2f}), "
                        f"{paired['auto_faster']} of {paired['rounds']}" if paired else "-") + " | "
                     + (f"{floor:.2f}" if floor else "-") + " |")
    errors = [f"- {r['config']} {r['order']} {r['impl']}: {r['error']}" for r in report["rows"]
              if "error" in r]
    return "\n".join(lines + ([""] + errors if errors else []))


def _machine(device: torch.device) -> dict:
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "cpu_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    if device.type == "cuda":
        meta["card"] = torch.cuda.get_device_name(device)
    try:
        import higher

        meta["higher"] = getattr(higher, "__version__", "installed")
    except ImportError:
        meta["higher"] = None
    return meta


def _data_bench(device: torch.device, quick: bool) -> object:
    """The episode-sampler benchmark of ``mtl.data.bench`` (its error recorded, not raised)."""
    from mtl.data import bench as data_bench

    try:
        return data_bench.benchmark(device=str(device), quick=quick)
    except Exception as error:  # noqa: BLE001 - one row of many: record and go on
        return {"error": f"{type(error).__name__}: {error}"}


def _write(path: Path | None, report: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(path)

