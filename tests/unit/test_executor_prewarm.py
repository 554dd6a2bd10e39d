"""The local pool starts its worker processes when it is made (and so imports the pipeline and
loads highdicom's tables there before any job), instead of at the first job, which otherwise
waits for both; its workers end when the node's process is killed, instead of waiting for tasks
forever."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psutil

from node.config import NodeConfig
from node.flow.executor import LocalExecutor
from tests.conftest import REPO

NODE = """
import multiprocessing, sys, time
from pathlib import Path
from node.config import NodeConfig
from node.flow.executor import LocalExecutor
from pipelines.study import one_series
executor = LocalExecutor(NodeConfig(state_dir=Path(sys.argv[1])))
# a job that fails at once (no such preset): the worker is up, idle, waiting for the next task
executor.submit(one_series([], "seg.dcm", "no-such-preset"), Path(sys.argv[1])).exception()
print(*[c.pid for c in multiprocessing.active_children() if c.name.startswith("SpawnProcess")],
      flush=True)
time.sleep(600)
"""


def _pool_workers(before: set[int]) -> list[multiprocessing.Process]:
    return [child for child in multiprocessing.active_children()
            if child.pid not in before and child.name.startswith("SpawnProcess")]


def test_local_pool_starts_its_workers_before_the_first_job(tmp_path: Path) -> None:
    before = {child.pid for child in multiprocessing.active_children()}
    executor = LocalExecutor(NodeConfig(state_dir=tmp_path, workers=2))
    try:
        first = _pool_workers(before)
        assert len(first) == 2
        executor.renew()  # a new pool (after a worker died) starts its workers too
        assert len(_pool_workers(before | {child.pid for child in first})) == 2
    finally:
        executor.shutdown()


def _ended(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_workers_end_when_the_node_is_killed(tmp_path: Path) -> None:
    node = subprocess.Popen([sys.executable, "-c", NODE, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        workers = [psutil.Process(int(pid)) for pid in node.stdout.readline().split()]
        assert len(workers) == 1
        os.kill(node.pid, signal.SIGKILL)
        node.wait()
        deadline = time.monotonic() + 120
        while not all(_ended(worker) for worker in workers):
            assert time.monotonic() < deadline, "pool workers outlived the killed node"
            time.sleep(0.1)
    finally:
        if node.poll() is None:
            node.kill()


def _standard_tables_loaded() -> int:
    from highdicom._standard_utils import get_module_attribute_map

    return get_module_attribute_map.cache_info().currsize


def test_a_local_job_worker_reads_highdicoms_tables_when_it_starts(tmp_path: Path) -> None:
    """The tables the first SEG read would parse (pipelines.io.segmentation.load_standard_tables)
    are in the job worker's cache before it runs anything, and not in a fresh interpreter."""
    config = NodeConfig(state_dir=tmp_path, executor={"kind": "local"})
    local = LocalExecutor(config)
    try:
        assert local._pool.submit(_standard_tables_loaded).result(timeout=120) == 1
    finally:
        local.shutdown()
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        assert pool.submit(_standard_tables_loaded).result(timeout=120) == 0


SERVE_ORDER = """
import argparse, json, sys
from pathlib import Path
import node.flow.executor

def made(config):  # stands in for the pool: what had this process imported by then?
    print(json.dumps({name: name in sys.modules
                      for name in ("node.service", "pipelines.process", "SimpleITK")}))
    raise SystemExit(0)

node.flow.executor.make_executor = made
from node import cli
cli._serve(argparse.Namespace(config=Path(sys.argv[1])))
"""


def test_serve_starts_the_job_workers_before_it_imports_the_rest_of_the_node(
        tmp_path: Path) -> None:
    """``radiomics-node serve`` makes its executor (the pool spawns its workers, which import the
    pipeline) before it imports the service and with it the pipeline, so the two imports overlap
    and a study that comes right after a start does not wait for the workers."""
    config = tmp_path / "node.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\n")
    done = subprocess.run([sys.executable, "-c", SERVE_ORDER, str(config)], cwd=REPO,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1]) == {
        "node.service": False, "pipelines.process": False, "SimpleITK": False}
