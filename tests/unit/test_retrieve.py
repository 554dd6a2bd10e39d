"""Retrieval requests without a PACS: an unreachable source, a series that comes by itself."""

from __future__ import annotations

import time
from pathlib import Path

from node.config import NodeConfig
from node.index import Index, InstanceRow
from node.retrieve import Retriever
from tests.conftest import free_port

SERIES = "1.2.826.0.1.3680043.8.498.10"
STUDY = "1.2.826.0.1.3680043.8.498.11"


def _node(tmp_path: Path, port: int) -> tuple[NodeConfig, Index]:
    source = {"name": "archive", "ae_title": "ARCHIVE", "host": "127.0.0.1", "port": port}
    config = NodeConfig(state_dir=tmp_path / "node", retrieve={
        "sources": [source], "wait": 0.3, "retry_interval": 0.05, "timeout": 2})
    index = Index(config.index_path)
    assert index.request_retrieval(SERIES, STUDY, "1.2.3")
    assert not index.request_retrieval(SERIES, STUDY, "1.2.3")  # asked once
    return config, index


def test_unreachable_source_is_retried_then_the_request_fails(tmp_path: Path) -> None:
    port = free_port()
    config, index = _node(tmp_path, port)
    retriever = Retriever(config, index)
    retriever.tick()
    [row] = index.retrievals()
    assert (row.state, row.attempts) == ("waiting", 1)
    assert row.reason == f"archive: no association with ARCHIVE@127.0.0.1:{port}"
    retriever.tick()  # not due yet: nothing tried
    assert index.retrievals()[0].attempts == 1
    time.sleep(0.35)
    retriever.tick()
    [row] = index.retrievals()
    assert row.state == "failed"
    assert row.reason == (f"source series {SERIES} not received within 0.3 s and not retrievable "
                          f"from archive (archive: no association with ARCHIVE@127.0.0.1:{port})")


def test_series_that_arrives_by_itself_ends_the_request(tmp_path: Path) -> None:
    config, index = _node(tmp_path, free_port())
    index.add_instance(InstanceRow("1.2.826.0.1.3680043.8.498.12", "1.2.840.10008.5.1.4.1.1.2",
                                   STUDY, SERIES, "/nowhere", 1, "SCANNER"), "CT")
    Retriever(config, index).tick()
    [row] = index.retrievals()
    assert (row.state, row.attempts, row.reason) == ("received", 0, None)
