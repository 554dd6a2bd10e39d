"""Disk watermark: below the free-space floor the receiver answers 0xA700 (Out of Resources,
PS3.4 B.2.3) without writing, and stores again once space returns."""

from pathlib import Path

import pydicom
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage

from node.config import NodeConfig
from node.dicom.receiver import Receiver
from node.state import Index
from tests.conftest import free_port


def test_store_refused_below_floor_and_accepted_when_space_returns(tmp_path: Path,
                                                                   refdata: Path) -> None:
    config = NodeConfig(state_dir=tmp_path / "state", listener={"port": free_port()},
                        min_free_bytes=2**62,  # more than any disk has: "the disk is full"
                        peers=[{"name": "scanner", "ae_title": "SCANNER", "host": "127.0.0.1"}])
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    try:
        ds = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
        ae = AE(ae_title="SCANNER")
        ae.add_requested_context(CTImageStorage)
        assoc = ae.associate("127.0.0.1", config.listener.port, ae_title="RADIOMICS")
        assert assoc.is_established
        refused = assoc.send_c_store(ds)
        assert refused.Status == 0xA700 and "below the floor" in refused.ErrorComment
        assert index.instances.get(ds.SOPInstanceUID) is None
        assert list(config.spool_dir.rglob("*.dcm")) == []

        config.min_free_bytes = 0  # space is back
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()
        assert index.instances.get(ds.SOPInstanceUID) is not None
    finally:
        receiver.stop()
        index.close()
