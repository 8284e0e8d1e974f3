"""mtl.engine.distributed on the CPU: 2 Gloo processes on loopback (spawned), float64, bounded timeouts.

One spawn runs every cooperative scenario (process start-up dominates on 2 cores); the parent
computes the single-process references and each test compares one aspect.
"""
from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest
import torch

from mtl.engine import distributed as D
from mtl.engine.checkpoint import load_checkpoint, save_checkpoint
from mtl.data import EpisodeSampler, FewShotDataset
from mtl.engine.evaluate import confidence_interval
from mtl.models import Conv4

WORLD = 2
B = 5               # uneven on purpose: rank 0 takes 3 tasks, rank 1 takes 2
STEPS = 3           # resume tests: checkpoint after 2 steps, continue with the third
EVAL_EPISODES = 7
DEADLINE_S = 180    # the whole spawn, start-up included, on 2 busy cores
GRAD_TOL = dict(rtol=1e-10, atol=1e-13)
PARAM_TOL = dict(rtol=1e-9, atol=1e-12)
ALGORITHM_SETTINGS = {"maml": dict(inner_steps=2, inner_lr=0.4, first_order=False),
                      "reptile": dict(inner_steps=2, inner_lr=0.1)}


# ----------------------------------------------------------------------------- a small world

def _dataset() -> FewShotDataset:
    images = torch.randint(0, 256, (12, 6, 1, 16, 16), generator=torch.Generator().manual_seed(7),
                           dtype=torch.uint8)
    return FewShotDataset(images, [f"c{i}" for i in range(12)], "synthetic", "train")


def _sampler() -> EpisodeSampler:
    return EpisodeSampler(_dataset(), ways=5, shots=1, queries=2, seed=0)


def _build(name: str):
    from mtl.algorithms import ALGORITHMS

    torch.manual_seed(0)
    model = Conv4(1, 5, hidden=8, image_size=16).double()
    algorithm = ALGORITHMS[name](model, strategy="loop", **ALGORITHM_SETTINGS[name])
    # SGD with momentum (state to resume). Not Adam: it divides the ~1e-16 summation noise on a
    # gradient that is 0 in exact arithmetic (conv bias before batch norm) by its own tiny scale.
    optimizer = torch.optim.SGD(algorithm.parameters(), lr=0.1, momentum=0.9)
    return algorithm, optimizer, D.TaskStream(_sampler(), seed=3, dtype=torch.float64)


def _step(algorithm, optimizer, stream, step: int):
    """One meta-step; returns the meta-gradient it applied and the metrics."""
    optimizer.zero_grad(set_to_none=True)
    metrics = D.meta_gradient(algorithm, stream, step, B)
    grads = {n: p.grad.clone() for n, p in algorithm.named_parameters() if p.grad is not None}
    optimizer.step()
    return grads, metrics


def _params(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


def _save(path, algorithm, optimizer, step: int) -> None:
    save_checkpoint(path, {"config": {}, "step": step, "learner": algorithm.state_dict(),
                           "optimizer": optimizer.state_dict()})


def _resume(path, name: str):
    algorithm, optimizer, stream = _build(name)
    checkpoint = load_checkpoint(path)
    algorithm.load_state_dict(checkpoint["learner"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    return algorithm, optimizer, stream, checkpoint["step"]


def _accuracy_of(algorithm):
    def accuracy(batch):
        return (algorithm.predict(batch).argmax(-1) == batch.query_y).double().mean(-1)
    return accuracy


def _eval_episodes():
    for batch in _sampler().episodes(EVAL_EPISODES, 3, seed=1):
        yield type(batch)(*(t.double() if t.is_floating_point() else t for t in batch))


class _EvalSet:
    """The fixed evaluation episodes in the shape ``mtl.engine.evaluate.evaluate`` takes (an EpisodeSet)."""

    n, split, seed = EVAL_EPISODES, "test", 1

    def __iter__(self):
        return _eval_episodes()

    def __len__(self) -> int:
        return -(-EVAL_EPISODES // 3)


def _evaluate_scores() -> list[float]:
    """``mtl.engine.evaluate.evaluate`` of a fresh MAML learner (under torchrun: sharded across the ranks)."""
    from mtl.engine.config import TrainConfig
    from mtl.engine.evaluate import evaluate

    algorithm, _, _ = _build("maml")
    config = TrainConfig(dataset="omniglot", ways=5, shots=1, queries=2, test_inner_steps=2, device="cpu")
    return evaluate(algorithm, config, episode_set=_EvalSet(), progress=False).scores


# ----------------------------------------------------------------------------- scenarios (run by each rank)

def _cooperate(tmp: Path) -> dict:
    out: dict = {"main": D.is_main_process(), "rank": D.get_rank()}
    for name in ALGORITHM_SETTINGS:
        algorithm, optimizer, stream = _build(name)
        grads, metrics = _step(algorithm, optimizer, stream, 0)
        out[name] = {"grads": grads, "params": _params(algorithm), "metrics": metrics}
    # Distributed for STEPS steps; rank 0 alone checkpoints after STEPS - 1.
    algorithm, optimizer, stream = _build("maml")
    for step in range(STEPS):
        _step(algorithm, optimizer, stream, step)
        if step == STEPS - 2 and D.is_main_process():
            _save(tmp / "distributed.pt", algorithm, optimizer, STEPS - 1)
    out["distributed_final"] = _params(algorithm)
    # The reverse: continue the single-process checkpoint that the parent wrote before the spawn.
    algorithm, optimizer, stream, done = _resume(tmp / "single.pt", "maml")
    for step in range(done, STEPS):
        _step(algorithm, optimizer, stream, step)
    out["resumed_final"] = _params(algorithm)
    # Episode streams: this rank's task indices and tasks at two steps.
    stream = D.TaskStream(_sampler(), seed=3)
    out["streams"] = {step: {"indices": list(stream.indices(step, B)), "tasks": list(stream.sample(step, B))}
                      for step in (0, 1)}
    algorithm, _, _ = _build("maml")
    out["eval"] = D.sharded_scores(_eval_episodes(), EVAL_EPISODES, _accuracy_of(algorithm))
    out["evaluate"] = _evaluate_scores()
    # A gradient present on rank 1 only, and one absent everywhere.
    present, absent = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    present.grad = torch.full((3,), 4.0) if D.get_rank() == 1 else None
    D.all_reduce_gradients([present, absent], weight=0.5)
    out["sparse"] = {"present": present.grad, "absent": absent.grad is None}
    # A gather where rank 1 has no share.
    out["gather_one"] = D.gather_shards(torch.tensor([5.0]) if D.get_rank() == 0 else torch.zeros(0), 1)
    # A stop decision (time budget) that only rank 1's clock has reached yet, then one no rank has.
    out["stop"] = [D.any_rank(D.get_rank() == 1), D.any_rank(False)]
    return out


def _rank_dies(tmp: Path) -> dict:
    model = torch.nn.Linear(3, 1)
    model.weight.grad = torch.ones_like(model.weight)
    if D.get_rank() == 1:
        os._exit(3)
    return _expect_failure(model)


def _rank_hangs(tmp: Path) -> dict:
    model = torch.nn.Linear(3, 1)
    model.weight.grad = torch.ones_like(model.weight)
    if D.get_rank() == 1:
        time.sleep(60)  # never joins the all-reduce (the parent kills it)
        return {}
    return _expect_failure(model)


def _expect_failure(model) -> dict:
    start = time.monotonic()
    try:
        D.all_reduce_gradients(model)
    except Exception as exc:  # noqa: BLE001 - the test checks the type
        return {"error": type(exc).__name__, "message": str(exc), "seconds": time.monotonic() - start,
                "is_mtl_error": isinstance(exc, D.MTLError)}
    return {"error": None, "seconds": time.monotonic() - start}


# ----------------------------------------------------------------------------- process plumbing

def _worker(rank: int, port: int, scenario: str, tmp: str, timeout_s: float) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), MTL_PROGRESS="0")
    torch.set_num_threads(1)
    tmp = Path(tmp)
    try:
        D.setup(backend="gloo", timeout_s=timeout_s)
        result = globals()[scenario](tmp)
        torch.save(result, tmp / f"rank{rank}.pt")
        if scenario == "_cooperate":  # finale, saving a spawn: rank 1 dies, rank 0 must not hang
            torch.save(_rank_dies(tmp), tmp / f"rank{rank}-dies.pt")
    except BaseException:
        (tmp / f"rank{rank}.err").write_text(traceback.format_exc())
        raise


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(scenario: str, tmp: Path, *, timeout_s: float = 30.0, wait: tuple[int, ...] = (0, 1)) -> list:
    """Run ``scenario`` on WORLD ranks; results of the ranks in ``wait`` (others are killed)."""
    context = multiprocessing.get_context("spawn")
    port = _free_port()
    procs = [context.Process(target=_worker, args=(r, port, scenario, str(tmp), timeout_s), daemon=True)
             for r in range(WORLD)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + DEADLINE_S
    for r in wait:
        procs[r].join(max(0.0, deadline - time.monotonic()))
    hung = [r for r in wait if procs[r].is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
        p.join()
    errors = [(tmp / f"rank{r}.err").read_text() for r in wait if (tmp / f"rank{r}.err").exists()]
    assert not errors, "\n".join(errors)
    assert not hung, f"ranks {hung} still running after {DEADLINE_S} s"
    return [torch.load(tmp / f"rank{r}.pt", weights_only=True) for r in wait]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Single-process references, then the 2-rank run; ``(reference, [rank0, rank1])``."""
    tmp = tmp_path_factory.mktemp("distributed")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 3 processes on 2 shared cores: more threads only spin
    try:
        yield _references_and_ranks(tmp)
    finally:
        torch.set_num_threads(threads)


def _references_and_ranks(tmp: Path):
    reference: dict = {}
    for name in ALGORITHM_SETTINGS:
        algorithm, optimizer, stream = _build(name)
        grads, metrics = _step(algorithm, optimizer, stream, 0)
        reference[name] = {"grads": grads, "params": _params(algorithm), "metrics": metrics}
    algorithm, optimizer, stream = _build("maml")
    for step in range(STEPS):
        _step(algorithm, optimizer, stream, step)
        if step == STEPS - 2:
            _save(tmp / "single.pt", algorithm, optimizer, STEPS - 1)
    reference["final"] = _params(algorithm)
    algorithm, _, _ = _build("maml")
    with torch.no_grad():
        reference["eval"] = torch.cat([_accuracy_of(algorithm)(b) for b in _eval_episodes()])
    reference["evaluate"] = _evaluate_scores()
    ranks = _spawn("_cooperate", tmp)
    return reference, ranks, tmp


# ----------------------------------------------------------------------------- tests

def test_shard_range_partitions_in_order():
    for n in range(0, 12):
        for world in (1, 2, 3, 8):
            shares = [D.shard_range(n, rank=r, world_size=world) for r in range(world)]
            assert [i for s in shares for i in s] == list(range(n))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1


def test_a_gather_with_an_empty_share(world):
    _, ranks, _ = world
    for rank in ranks:
        assert rank["gather_one"].tolist() == [5.0]


@pytest.mark.parametrize("name", list(ALGORITHM_SETTINGS))
def test_one_meta_step_matches_single_process(world, name):
    reference, ranks, _ = world
    expected = reference[name]
    # The check can fail: equal (unweighted) shares of 3 and 2 tasks give another gradient.
    algorithm, _, stream = _build(name)
    shares = []
    for r in range(WORLD):
        algorithm.zero_grad(set_to_none=True)
        algorithm.meta_gradient(stream.sample(0, B, rank=r, world_size=WORLD))
        shares.append(next(iter(algorithm.parameters())).grad.clone())
    first = next(iter(expected["grads"].values()))
    assert not torch.allclose((shares[0] + shares[1]) / 2, first, **GRAD_TOL)
    for rank in ranks:
        got = rank[name]
        assert got["grads"].keys() == expected["grads"].keys()
        for key in expected["grads"]:
            torch.testing.assert_close(got["grads"][key], expected["grads"][key], **GRAD_TOL)
        for key in expected["params"]:
            torch.testing.assert_close(got["params"][key], expected["params"][key], **PARAM_TOL)
        assert got["metrics"].keys() == expected["metrics"].keys()
        for key, value in expected["metrics"].items():
            assert got["metrics"][key] == pytest.approx(value, rel=1e-6)  # float32 accuracy


def test_distributed_run_resumes_single_process_and_back(world):
    reference, ranks, tmp = world
    # Distributed steps 0..1 -> checkpoint (rank 0 wrote it) -> step 2 in this single process.
    algorithm, optimizer, stream, done = _resume(tmp / "distributed.pt", "maml")
    assert done == STEPS - 1
    for step in range(done, STEPS):
        _step(algorithm, optimizer, stream, step)
    for key, value in reference["final"].items():
        torch.testing.assert_close(_params(algorithm)[key], value, **PARAM_TOL)
        for rank in ranks:
            torch.testing.assert_close(rank["distributed_final"][key], value, **PARAM_TOL)
            torch.testing.assert_close(rank["resumed_final"][key], value, **PARAM_TOL)
    start = _params(_build("maml")[0])
    assert not all(torch.allclose(start[k], v, **PARAM_TOL) for k, v in reference["final"].items())


def test_only_rank_zero_is_main(world):
    _, ranks, _ = world
    assert [r["main"] for r in ranks] == [True, False]
    assert [r["rank"] for r in ranks] == [0, 1]


def test_episode_streams_do_not_overlap_within_a_step(world):
    _, ranks, _ = world
    full = D.TaskStream(_sampler(), seed=3)
    for step in (0, 1):
        indices = [r["streams"][step]["indices"] for r in ranks]
        assert not set(indices[0]) & set(indices[1])
        assert sorted(indices[0] + indices[1]) == list(range(B))
        tasks = [r["streams"][step]["tasks"] for r in ranks]
        for a in range(len(indices[0])):
            for b in range(len(indices[1])):
                assert not torch.equal(tasks[0][0][a], tasks[1][0][b]), "two ranks drew the same task"
        # The union, in rank order, is exactly the single-process meta-batch.
        expected = full.sample(step, B, rank=0, world_size=1)
        for field, one, two in zip(expected, tasks[0], tasks[1]):
            assert torch.equal(torch.cat([one, two]), field)
    assert not torch.equal(ranks[0]["streams"][0]["tasks"][0], ranks[0]["streams"][1]["tasks"][0])


def test_sharded_evaluation_gathers_every_episode(world):
    reference, ranks, _ = world
    for rank in ranks:
        torch.testing.assert_close(rank["eval"], reference["eval"], rtol=0, atol=0)
    assert confidence_interval(ranks[0]["eval"]) == confidence_interval(reference["eval"])


def test_evaluation_under_torchrun_is_sharded_and_gives_the_single_process_scores(world, monkeypatch):
    reference, ranks, _ = world
    for rank in ranks:
        assert rank["evaluate"] == reference["evaluate"] and len(rank["evaluate"]) == EVAL_EPISODES
    # and it is really sharded: a rank adapts to its own share of the episodes only
    adapted = []
    monkeypatch.setattr(D, "is_distributed", lambda: True)
    monkeypatch.setattr(D, "gather_shards", lambda values, total: adapted.append(len(values)) or values)
    monkeypatch.setattr(D, "shard_range", lambda n, **_: range(0, 4))
    _evaluate_scores()
    assert adapted == [4]


def test_missing_gradients_count_as_zero(world):
    _, ranks, _ = world
    for rank in ranks:
        torch.testing.assert_close(rank["sparse"]["present"], torch.full((3,), 2.0))
        assert rank["sparse"]["absent"]


def test_ranks_stop_together_when_any_rank_reaches_the_time_budget(world):
    _, ranks, _ = world
    assert [r["stop"] for r in ranks] == [[True, False], [True, False]]
    assert D.any_rank(True) and not D.any_rank(False)  # single process: the flag itself


def _assert_clear_failure(result: dict, within_s: float) -> None:
    assert result["error"] == "DistributedError" and result["is_mtl_error"], result
    assert "--resume" in result["message"] and "MTL_DIST_TIMEOUT" in result["message"]
    assert result["seconds"] < within_s


def test_a_dead_rank_stops_the_run_with_a_clear_error(world):
    _, _, tmp = world
    _assert_clear_failure(torch.load(tmp / "rank0-dies.pt", weights_only=True), within_s=30)


def test_a_stuck_rank_times_out_with_a_clear_error(tmp_path):
    (result,) = _spawn("_rank_hangs", tmp_path, timeout_s=3.0, wait=(0,))
    _assert_clear_failure(result, within_s=30)
    assert result["seconds"] >= 2.5  # it waited for the timeout, not less


def test_single_process_helpers_are_no_ops():
    info = D.setup()
    assert (info.rank, info.world_size) == (0, 1) and D.is_main_process()
    param = torch.nn.Parameter(torch.ones(2))
    param.grad = torch.full((2,), 3.0)
    D.all_reduce_gradients([param], weight=0.25)
    assert torch.equal(param.grad, torch.full((2,), 3.0))
    assert D.all_reduce_metrics({"loss": 2}) == {"loss": 2.0}


def test_setup_names_the_fix_when_torchrun_variables_are_missing(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(D.DistributedError, match="torchrun"):
        D.setup()


def test_setup_refuses_an_unknown_backend(monkeypatch):
    monkeypatch.setenv("MTL_DIST_BACKEND", "mpi")
    for name, value in dict(WORLD_SIZE="2", RANK="0", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT="1").items():
        monkeypatch.setenv(name, value)
    with pytest.raises(D.DistributedError, match="nccl.*gloo"):
        D.setup()


def test_meta_batch_smaller_than_world_is_refused():
    stream = D.TaskStream(_sampler(), seed=0)
    with pytest.raises(D.DistributedError, match="at least"):
        stream.sample(0, 1, rank=1, world_size=2)


def test_a_sampler_without_generator_runs_whole_batches_in_one_process_only():
    class Recorder:  # like meta-transfer learning's hard-task recorder: whole meta-batches only
        def __init__(self):
            self.inner = _sampler()

        def sample(self, n):
            return self.inner.sample(n)

    stream = D.TaskStream(Recorder(), seed=0)
    assert stream.sample(4, B)[0].shape[0] == B
    with pytest.raises(D.DistributedError, match="single process"):
        stream.sample(4, B, rank=0, world_size=2)


@pytest.mark.slow  # 3 process start-ups: ~15 s on a quiet machine, ~100 s on the loaded dev box
def test_torchrun_cli_run_continues_identically_in_one_process(tmp_path):
    """`torchrun -m mtl train` on 2 CPU processes for 2 steps, resumed by one process for 2 more,
    logs what one process logs for 4 steps; only rank 0 wrote the run folder."""
    from mtl.engine.rundir import RUN_FILES
    from mtl.engine.train import train

    config = dict(dataset="sinusoid", algorithm="maml", meta_batch=5, inner_steps=1, inner_lr=0.01,
                  val_every=2, val_episodes=8, log_every=1, strategy="loop", device="cpu", seed=4)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in config.items()]
    env = {**os.environ, "MTL_PROGRESS": "0", "OMP_NUM_THREADS": "1", "MTL_DIST_TIMEOUT": "120"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "mtl", "train", *flags, "--iterations=2", "--threads=1", f"--out={tmp_path / 'a'}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("completed after 2 meta-steps") == 1  # rank 0 alone reports
    assert {p.name for p in (tmp_path / "a").iterdir()} <= set(RUN_FILES)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train({**config, "iterations": 4}, out=tmp_path / "a", resume=True, progress=False)
        train({**config, "iterations": 4}, out=tmp_path / "b", progress=False)
    finally:
        torch.set_num_threads(threads)
    rows = [[json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
            for run in ("a", "b")]
    assert [(r["kind"], r["step"]) for r in rows[0]] == [(r["kind"], r["step"]) for r in rows[1]]
    assert len(rows[0]) == 6  # 4 train rows, 2 validation rows, none twice
    for resumed, single in zip(*rows):
        assert resumed["loss"] == pytest.approx(single["loss"], rel=1e-5)  # float32 sums in 2 orders
