"""``radiomics-node config check``: everything a configuration points at, checked before the node
runs with it. One line per check, ``ok`` or ``FAIL`` with the reason.

- state directory: exists or can be made, and is writable;
- TLS: the certificate, key and CA files load into the contexts the node will use (PS3.15 B.12);
- presets: each rule's preset loads (``pipelines.science.presets``);
- models: each package loads and matches its pinned sha256, and its self-test passes
  (``models.package.load_package``);
- peers, destinations, retrieve sources: DICOM ones answer C-ECHO (Verification SOP Class,
  PS3.4 Annex A) within the timeout; Orthanc REST ones answer ``GET /system``; Orthanc feeds
  likewise; DICOMweb ones a QIDO-RS search; FHIR ones ``GET [base]/metadata`` with a
  CapabilityStatement, whose FHIR version is shown. ``offline`` skips the network.
- status page: where it listens, whether it authenticates and the host names it answers to
  (``status.allowed_hosts``). Empty credentials off loopback are refused when the configuration
  loads (``node.config.StatusConfig``), before these checks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pynetdicom.sop_class import Verification

from node.config import NodeConfig, RemotePeer


@dataclass(frozen=True)
class CheckResult:
    """One line of the report."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def _state_dir(config: NodeConfig) -> CheckResult:
    target = config.state_dir.resolve()
    existing = next(p for p in (target, *target.parents) if p.exists())
    if not existing.is_dir():
        return CheckResult("state_dir", False, f"{existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        return CheckResult("state_dir", False, f"{existing} is not writable by this user")
    made = "" if existing == target else f" (will be made under {existing})"
    return CheckResult("state_dir", True, f"{target} writable{made}")


def _tls(config: NodeConfig) -> Iterator[CheckResult]:
    from node.dicom.tls import TLSConfigError, client_context, server_context

    tls = config.tls
    if tls.certificate is None and tls.ca_certificates is None and not tls.listener:
        return
    for what, build in (("listener", server_context), ("outbound", client_context)):
        if what == "listener" and not tls.listener:
            continue
        try:
            build(tls)
        except TLSConfigError as exc:
            yield CheckResult(f"tls {what}", False, str(exc))
        else:
            files = ", ".join(str(p) for p in (tls.certificate, tls.private_key,
                                               tls.ca_certificates) if p is not None)
            yield CheckResult(f"tls {what}", True, f"loaded {files or 'system CAs'}")


def _presets(config: NodeConfig) -> Iterator[CheckResult]:
    from pipelines.science.presets import load_preset

    for where, name in config.rule_presets().items():
        try:
            preset = load_preset(name)
        except Exception as exc:  # any reason a preset cannot load is reported, not raised
            yield CheckResult(f"{where}.preset", False, f"{name}: {exc}")
        else:
            yield CheckResult(f"{where}.preset", True,
                              f"{preset.name} (sha256 {preset.hash[:12]})")


def _models(config: NodeConfig) -> Iterator[CheckResult]:
    from models.package import load_package

    for ref in config.models:
        try:
            package = load_package(ref.path, ref.sha256)
        except Exception as exc:  # ModelPackageError names file and check; others are reported
            yield CheckResult(f"models {ref.path}", False, str(exc))
        else:
            yield CheckResult(f"models {ref.path}", True,
                              f"{package.name} {package.version}, sha256 pinned, self-test passed")


def _remotes(config: NodeConfig) -> list[tuple[str, RemotePeer]]:
    """Everything the node connects to, each once: (role and name, how to reach it)."""
    found: dict[tuple, tuple[str, RemotePeer]] = {}
    for role, remotes in (("destination", config.destinations),
                          ("retrieve source", config.retrieve.sources)):
        for remote in remotes:
            key = (remote.kind, remote.ae_title, remote.host, remote.port, remote.url)
            found.setdefault(key, (f"{role} {remote.name}", remote))
    for peer in config.peers:
        if peer.port is None:
            continue
        key = ("dicom", peer.ae_title, peer.host, peer.port, None)
        found.setdefault(key, (f"peer {peer.name}", RemotePeer(
            name=peer.name, ae_title=peer.ae_title, host=peer.host, port=peer.port)))
    for feed in config.orthanc_feeds:
        key = ("orthanc-rest", None, None, None, feed.url)
        found.setdefault(key, (f"orthanc feed {feed.name}", RemotePeer(
            name=feed.name, kind="orthanc-rest", url=feed.url, username=feed.username,
            password=feed.password)))
    return list(found.values())


def _reach(config: NodeConfig, remote: RemotePeer, timeout: float) -> tuple[bool, str]:
    """C-ECHO a DICOM peer, ``GET /system`` an Orthanc, a one-study QIDO-RS search of a
    DICOMweb service, ``GET [base]/metadata`` of a FHIR server; (answered, what happened)."""
    if remote.kind == "fhir":
        from node.flow.fhir import FhirClient, FhirError

        try:
            with FhirClient(str(remote.url), remote.username, remote.password, remote.token,
                            timeout) as client:
                statement = client.capabilities()
        except FhirError as exc:
            return False, str(exc)
        software = statement.get("software") or {}
        named = " ".join(str(software[k]) for k in ("name", "version") if software.get(k))
        shown = f"{remote.url}: FHIR {statement.get('fhirVersion', '?')}" \
            + (f" ({named})" if named else "")
        if not str(statement.get("fhirVersion", "")).startswith("4."):
            return False, f"{shown}; the node posts FHIR R4 resources"
        return True, shown
    if remote.kind == "dicomweb":
        from node.dicom.dicomweb import DicomWebError, DicomWebPeer

        try:
            with DicomWebPeer(str(remote.url), remote.username, remote.password,
                              timeout) as peer:
                peer.reachable()
        except DicomWebError as exc:
            return False, str(exc)
        return True, f"{remote.url}: QIDO-RS answered"
    if remote.kind == "orthanc-rest":
        from node.dicom.orthanc import OrthancClient, OrthancError

        try:
            with OrthancClient(str(remote.url), remote.username, remote.password,
                               timeout) as client:
                system = client.system()
        except OrthancError as exc:
            return False, str(exc)
        return True, f"{remote.url}: Orthanc {system.get('Version', '?')} " \
                     f"(DICOM AET {system.get('DicomAet', '?')})"
    from node.dicom.store_scu import AssociationRefused, associate

    try:
        assoc = associate(config.listener.ae_title, remote, [Verification], timeout,
                          tls=config.tls)
    except AssociationRefused as exc:
        return False, f"{exc} within {timeout:g} s (is the node's AE title " \
                      f"{config.listener.ae_title} known to it?)"
    try:
        status = assoc.send_c_echo()
    finally:
        assoc.release()
    code = getattr(status, "Status", None)
    if code != 0x0000:
        shown = "no response" if code is None else f"status 0x{code:04X}"
        return False, f"C-ECHO {remote.describe()}: {shown}"
    return True, f"C-ECHO {remote.describe()}: success"


def _status_page(config: NodeConfig) -> CheckResult:
    status = config.status
    if not status.enabled:
        return CheckResult("status page", True, "disabled")
    auth = "basic" if status.password is not None else ""
    auth += ("+" if auth else "") + "token" if status.token is not None else ""
    return CheckResult("status page", True,
                       f"http://{status.host}:{status.port}/ "
                       f"({'authentication: ' + auth if auth else 'loopback, no authentication'}"
                       f"; Host {', '.join(sorted(status.served_hosts))})")


def check_config(config: NodeConfig, offline: bool = False,
                 timeout: float = 5.0) -> list[CheckResult]:
    """Every check of ``config``; network checks only when not ``offline``."""
    results = [_state_dir(config), *_tls(config), *_presets(config), *_models(config)]
    for name, remote in _remotes(config):
        if offline:
            results.append(CheckResult(name, True, f"{remote.describe()} (not contacted: "
                                                   "--offline)"))
            continue
        ok, detail = _reach(config, remote, timeout)
        results.append(CheckResult(name, ok, detail))
    results.append(_status_page(config))
    return results


def report(path: Path | None, results: list[CheckResult]) -> tuple[str, int]:
    """The printed report and the exit code (1 when any check failed)."""
    failed = sum(not r.ok for r in results)
    lines = [r.line() for r in results]
    lines.append(f"{path or 'configuration'}: {len(results)} checks, "
                 f"{failed} failed" if failed else f"{path or 'configuration'}: all "
                 f"{len(results)} checks passed")
    return "\n".join(lines), 1 if failed else 0
