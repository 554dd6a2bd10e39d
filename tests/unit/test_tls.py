"""DICOM TLS (PS3.15 B.12, BCP 195): certificates made by the test with trustme (a CA, the node's
server certificate, a client certificate), a TLS listener, TLS clients with and without a
certificate, a plain-TCP client, and the node's own outbound TLS."""

from __future__ import annotations

import socket
import ssl
from pathlib import Path

import pydicom
import pytest
import trustme
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from node.config import Destination, NodeConfig, TLSConfig
from node.dicom.receiver import Receiver
from node.dicom.store_scu import c_store
from node.dicom.tls import BCP195_TLS12_CIPHERS, client_context
from node.state import Index
from tests.conftest import free_port


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """PEM files: ca, node (certificate + key for 127.0.0.1), client (certificate + key)."""
    folder = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    files = {"ca": folder / "ca.pem", "node": folder / "node.pem", "client": folder / "client.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    ca.issue_cert("127.0.0.1", "localhost").private_key_and_cert_chain_pem.write_to_path(
        str(files["node"]))
    ca.issue_cert("scanner.example").private_key_and_cert_chain_pem.write_to_path(
        str(files["client"]))
    return files


def _tls(pki: dict[str, Path], **changes) -> TLSConfig:
    return TLSConfig(certificate=pki["node"], private_key=pki["node"], ca_certificates=pki["ca"],
                     **changes)


@pytest.fixture
def node(tmp_path: Path, pki: dict[str, Path], refdata: Path):
    config = NodeConfig(state_dir=tmp_path / "state", listener={"port": free_port()},
                        tls=_tls(pki, listener=True),
                        peers=[{"name": "scanner", "ae_title": "SCANNER", "host": "127.0.0.1"},
                               {"name": "node", "ae_title": "RADIOMICS", "host": "127.0.0.1"}],
                        limits={"network_timeout": 5, "acse_timeout": 5})
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    yield config, index, pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    receiver.stop()
    index.close()


def _associate(config: NodeConfig, context: ssl.SSLContext | None):
    ae = AE(ae_title="SCANNER")
    ae.add_requested_context(Verification)
    ae.add_requested_context(CTImageStorage)
    tls_args = (context, "127.0.0.1") if context else None
    return ae.associate("127.0.0.1", config.listener.port, ae_title="RADIOMICS",
                        tls_args=tls_args)


def _client(pki: dict[str, Path], with_certificate: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki["ca"]))
    if with_certificate:
        context.load_cert_chain(pki["client"])
    return context


def test_client_with_certificate_stores(node, pki) -> None:
    config, index, ct = node
    assoc = _associate(config, _client(pki, with_certificate=True))
    assert assoc.is_established
    tls_socket = assoc.dul.socket.socket
    assert tls_socket.version() in ("TLSv1.2", "TLSv1.3")
    assert assoc.send_c_store(ct).Status == 0x0000
    assoc.release()
    assert index.instances.get(ct.SOPInstanceUID) is not None


def test_many_pdus_back_to_back_over_tls(tmp_path: Path, pki, refdata: Path) -> None:
    """Small PDUs over TLS (the node accepts 4 KiB PDUs, so each slice comes in a dozen): the
    decrypted bytes the SSL layer holds back are read (pynetdicom's DUL asks the socket for
    pending bytes as well as select, pynetdicom issue 528)."""
    config = NodeConfig(state_dir=tmp_path / "state",
                        listener={"port": free_port(), "max_pdu": 4096},
                        tls=_tls(pki, listener=True),
                        peers=[{"name": "scanner", "ae_title": "SCANNER", "host": "127.0.0.1"}])
    index = Index(config.index_path)
    receiver = Receiver(config, index)
    receiver.start()
    ct = pydicom.dcmread(refdata / "pydicom" / "test_files" / "CT_small.dcm")
    uids = [f"1.2.826.0.1.3680043.10.9.{n}" for n in range(8)]
    try:
        assoc = _associate(config, _client(pki, with_certificate=True))
        assert assoc.is_established
        for uid in uids:
            ct.SOPInstanceUID = uid
            assert assoc.send_c_store(ct).Status == 0x0000
        assoc.release()
        for uid in uids:
            row = index.instances.get(uid)
            assert row is not None and pydicom.dcmread(row.path).PixelData == ct.PixelData
    finally:
        receiver.stop()
        index.close()


def test_client_without_certificate_is_refused(node, pki) -> None:
    config, index, ct = node
    assoc = _associate(config, _client(pki, with_certificate=False))
    assert not assoc.is_established
    assert index.instances.get(ct.SOPInstanceUID) is None


def test_plain_tcp_client_cannot_associate(node, pki) -> None:
    config, _, _ = node
    assert not _associate(config, None).is_established
    # and a silent plain connection does not stall the listener for TLS clients
    with socket.create_connection(("127.0.0.1", config.listener.port)):
        assoc = _associate(config, _client(pki, with_certificate=True))
        assert assoc.is_established and assoc.send_c_echo().Status == 0
        assoc.release()


def test_tls_1_1_and_weak_ciphers_are_refused(node, pki) -> None:
    config, _, _ = node
    old = _client(pki, with_certificate=True)
    old.minimum_version = ssl.TLSVersion.TLSv1
    old.maximum_version = ssl.TLSVersion.TLSv1_1
    assert not _associate(config, old).is_established
    weak = _client(pki, with_certificate=True)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("AES128-SHA256")  # RSA key exchange, CBC: not in BCP 195
    assert not _associate(config, weak).is_established
    modern = _client(pki, with_certificate=True)
    modern.maximum_version = ssl.TLSVersion.TLSv1_2
    assoc = _associate(config, modern)
    assert assoc.dul.socket.socket.cipher()[0] in BCP195_TLS12_CIPHERS.split(":")
    assoc.release()


def test_node_sends_over_tls(node, pki) -> None:
    config, index, ct = node
    destination = Destination(name="self", ae_title="RADIOMICS", host="127.0.0.1",
                              port=config.listener.port, tls=True)
    client_tls = TLSConfig(certificate=pki["client"], private_key=pki["client"],
                           ca_certificates=pki["ca"])
    assert c_store("RADIOMICS", destination, [ct], timeout=10, tls=client_tls) == [0x0000]
    assert index.instances.get(ct.SOPInstanceUID) is not None
    assert client_context(client_tls).check_hostname  # the node checks who it talks to


def test_tls_listener_needs_its_files() -> None:
    with pytest.raises(ValueError, match="a TLS listener needs certificate and private_key"):
        TLSConfig(listener=True)
    with pytest.raises(ValueError, match="verifying client certificates needs ca_certificates"):
        TLSConfig(listener=True, certificate="x.pem", private_key="x.pem")
