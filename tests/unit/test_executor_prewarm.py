"""The local pool starts its worker processes when it is made (and so imports the pipeline there
before any job), instead of at the first job, which otherwise waits for both."""

import multiprocessing
from pathlib import Path

from node.config import NodeConfig
from node.executor import LocalExecutor


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
