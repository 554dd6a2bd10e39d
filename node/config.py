"""The node's configuration: one YAML file validated by pydantic, environment variables on top.

Every field has a default that serves a single machine, so an empty file (or none) is a working
configuration. Environment variables named ``RADIOMICS_NODE_<FIELD>`` override the file; nested
fields join with ``__``, e.g. ``RADIOMICS_NODE_LISTENER__PORT=11113``.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydicom.datadict import dictionary_VR, tag_for_keyword

AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[\x20-\x5b\x5d-\x7e]+$")]
"""An Application Entity title: 1 to 16 characters of the default repertoire, no backslash
(PS3.5 Table 6.2-1, VR AE)."""

Port = Annotated[int, Field(ge=1, le=65535)]


class Strict(BaseModel):
    """Base of every section: unknown keys are errors, so a typo never passes silently."""

    model_config = ConfigDict(extra="forbid")


class ListenerConfig(Strict):
    """The DICOM storage SCP that scanners and the PACS send to."""

    ae_title: AETitle = Field(default="RADIOMICS", description="The node's AE title (called AE "
                              "title of associations to it).")
    host: str = Field(default="127.0.0.1", description="Address to listen on; 0.0.0.0 for every "
                      "interface.")
    port: Port = Field(default=11112, description="TCP port of the DICOM listener.")
    max_pdu: int = Field(default=0, ge=0, description="Maximum PDU size received; 0 = unlimited.")
    processes: int = Field(
        default=1, ge=1, le=64,
        description="Receiver processes listening on the port (SO_REUSEPORT, Linux): more than "
        "one lets parallel associations use several CPUs (docs/performance.md).")


class NumericRange(Strict):
    """A closed interval; either end may be open (None)."""

    min: float | None = Field(default=None, description="Lower end; null: open.")
    max: float | None = Field(default=None, description="Upper end; null: open.")

    @model_validator(mode="after")
    def _ordered(self) -> NumericRange:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is greater than max {self.max}")
        return self

    def contains(self, value: float) -> bool:
        """True when ``value`` lies inside the interval, ends included."""
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)


PRIORITIES = {"urgent": 0, "normal": 1, "backlog": 2}
"""A rule's priority -> the job queue's order (``node.state.jobs.JobStore.claim``: 0 first)."""


NUMERIC_VRS = frozenset({"DS", "IS", "US", "SS", "UL", "SL", "FL", "FD"})
"""Value representations (PS3.5 6.2) of the attributes ``ranges`` may test."""


def _compiles(value: str) -> str:
    """``value`` when it is a valid regular expression; ValueError naming the fault otherwise."""
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from exc
    return value


class SeriesMatch(Strict):
    """The tag conditions that pick an image series, decided on the header of one of its
    instances (series-level attributes are the same in every instance, PS3.3 C.7.3.1, C.8.2.1).

    All given conditions must hold. Tag names are DICOM keywords (PS3.6). Shared by a
    ``SeriesRule`` and each role of a ``StudyRule`` (``node.flow.router.mismatches``).
    """

    modality: list[str] = Field(default_factory=lambda: ["CT"],
                                description="Modality (0008,0060) values accepted.")
    series_description: str | None = Field(
        default=None,
        description="Regular expression searched in SeriesDescription, case-insensitive.",
    )
    ranges: dict[str, NumericRange] = Field(
        default_factory=dict,
        description="Numeric tag ranges, e.g. SliceThickness: {min: 0.5, max: 5}; tested on the "
        "header of the series' first instance.",
    )
    image_type_includes: list[str] = Field(
        default_factory=list, description="Values that ImageType (0008,0008) must all contain."
    )
    image_type_excludes: list[str] = Field(
        default_factory=lambda: ["LOCALIZER"],
        description="Values of which ImageType must contain none.",
    )

    @field_validator("series_description")
    @classmethod
    def _regex_compiles(cls, value: str | None) -> str | None:
        return None if value is None else _compiles(value)

    @field_validator("ranges")
    @classmethod
    def _numeric_keywords(cls, value: dict[str, NumericRange]) -> dict[str, NumericRange]:
        for keyword in value:
            tag = tag_for_keyword(keyword)
            if tag is None:
                raise ValueError(f"{keyword!r} is not a DICOM keyword")
            if dictionary_VR(tag) not in NUMERIC_VRS:
                raise ValueError(f"{keyword!r} has VR {dictionary_VR(tag)}, not a number")
        return value


class SeriesRule(SeriesMatch):
    """Which image series a pipeline preset is validated for, decided on the series' tags
    (``SeriesMatch``): a job for each such series and each segmentation drawn on it."""

    name: str = Field(description="Unique name, used in logs and the index.")
    preset: str = Field(default="ct-liver-basic", description="Preset run on matching series: a "
                        "shipped preset's name (pipelines/presets) or the path of a preset YAML "
                        "file (ends in .yaml/.yml or holds a /), relative to the configuration "
                        "file's folder; a file is loaded and validated with the configuration.")
    priority: Literal["urgent", "normal", "backlog"] = Field(
        default="normal",
        description="Queue order of its jobs: urgent ones start before every queued normal "
        "one, normal before backlog, the oldest first within each; a running job is never "
        "stopped. A series matched by several rules of one preset takes the most urgent.",
    )
    prior: PriorConfig | None = Field(
        default=None, description="Delta radiomics: find and fetch the patient's prior study "
        "of this rule before the job runs (PriorConfig); null: none.")


class PriorConfig(Strict):
    """Delta radiomics: the patient's prior study of the same rule, found and fetched from a
    queryable peer (``node.flow.priors``) before the job runs."""

    source: str = Field(description="Name of the retrieve.sources entry queried for the "
                        "patient's earlier studies and fetched from (C-FIND and C-GET, Orthanc "
                        "REST, or QIDO-RS and WADO-RS; not C-MOVE: its instances would arrive "
                        "at the listener and be processed as new).")
    window_days: int = Field(default=730, ge=1, description="How far back, in days before the "
                             "job's StudyDate, a prior study is looked for.")
    min_interval_days: int = Field(default=1, ge=0, description="A study closer than this many "
                                   "days to the job's StudyDate is not a prior (the same visit).")
    modality: str | None = Field(default=None, pattern=r"^[A-Z]{2,16}$", description="Modalities "
                                 "in Study (0008,0061) the prior study must include, e.g. CT; "
                                 "null: any.")
    retry_interval: float = Field(default=60.0, gt=0, description="Seconds before a lookup that "
                                  "met a network error is tried again; doubled at each try.")
    max_attempts: int = Field(default=5, ge=1, description="Lookups that met a network error "
                              "before the job runs without a prior (delta state failed).")

    @model_validator(mode="after")
    def _window_holds_the_interval(self) -> PriorConfig:
        if self.min_interval_days > self.window_days:
            raise ValueError(f"min_interval_days ({self.min_interval_days}) is beyond "
                             f"window_days ({self.window_days})")
        return self


ROLE_NAME = r"^[A-Za-z_][A-Za-z0-9_]*$"
"""A role's name: an identifier (``arterial``, ``portal_venous``, ``t1_pre``)."""


class RoleRule(SeriesMatch):
    """One role of a study rule: the series of the study that plays it, chosen by the tag
    conditions of ``SeriesMatch`` and by contrast, other attributes' values and b-values."""

    required: bool = Field(default=True, description="The study job waits for this role (up to "
                           "the rule's study_stable_after); an optional role is measured when "
                           "the study has it.")
    preset: str | None = Field(default=None, description="Preset measured on this role's "
                               "series; null: the study rule's preset.")
    contrast: bool | None = Field(
        default=None,
        description="true: Contrast/Bolus Agent (0018,0010) present and not empty (PS3.3 "
        "C.7.6.4); false: absent or empty; null: either.")
    tags: dict[str, str] = Field(
        default_factory=dict,
        description="Other attributes by DICOM keyword -> regular expression searched in the "
        "value (multiple values joined by a backslash), case-insensitive, e.g. "
        "ScanningSequence: SE, SequenceName: \"ep_b\"; an absent attribute fails.")
    b_values: list[float] = Field(
        default_factory=list,
        description="b-values (s/mm2) the series' instances must all hold between them, each "
        "within 1: Diffusion b-value (0018,9087) at the top level of each instance (PS3.3 "
        "C.8.13.5.9; not read inside an enhanced image's functional groups nor from private "
        "vendor attributes); read from every instance of the series.")

    @field_validator("tags")
    @classmethod
    def _keyword_patterns(cls, value: dict[str, str]) -> dict[str, str]:
        for keyword, pattern in value.items():
            if tag_for_keyword(keyword) is None:
                raise ValueError(f"{keyword!r} is not a DICOM keyword")
            try:
                _compiles(pattern)
            except ValueError as exc:
                raise ValueError(f"{keyword}: {exc}") from exc
        return value


class StudyRule(Strict):
    """Several series of one study, each by its role, measured on one segmentation drawn on one
    of them: a study job is queued once the required roles' series and the segmentation are
    stable (``node.flow.study_router``)."""

    name: str = Field(description="Unique name among rules and study_rules, used in logs and "
                      "the index.")
    preset: str = Field(default="ct-liver-basic", description="Preset of each role without its "
                        "own: a shipped preset's name or a preset YAML file (as for rules).")
    roles: dict[str, RoleRule] = Field(description="Role name (an identifier) -> the series "
                                       "that plays it; at least one required.")
    segmented_on: list[str] = Field(
        default_factory=list,
        description="Roles a segmentation may be drawn on; empty: any role.")
    study_stable_after: float = Field(
        default=600.0, gt=0,
        description="Seconds after the study's last received instance that a segmentation "
        "waits for a missing required role; then its job fails naming the role.")
    priority: Literal["urgent", "normal", "backlog"] = Field(
        default="normal", description="Queue order of its jobs, as for rules.")
    prior: PriorConfig | None = Field(
        default=None, description="Delta radiomics: find and fetch the patient's prior study, "
        "its segmentation drawn on a series that plays the role the job's segmentation was "
        "drawn on, as for rules.")

    @field_validator("roles")
    @classmethod
    def _roles(cls, value: dict[str, RoleRule]) -> dict[str, RoleRule]:
        bad = [name for name in value if not re.match(ROLE_NAME, name)]
        if bad:
            raise ValueError(f"role names must be identifiers (letters, digits, _); got {bad}")
        if not any(role.required for role in value.values()):
            raise ValueError("at least one role must be required")
        return value

    @model_validator(mode="after")
    def _segmented_on_known(self) -> StudyRule:
        unknown = [name for name in self.segmented_on if name not in self.roles]
        if unknown:
            raise ValueError(f"segmented_on names unknown roles {unknown}; roles are "
                             f"{list(self.roles)}")
        return self

    def preset_of(self, role: str) -> str:
        """The preset measured on ``role``'s series: its own, else the rule's."""
        return self.roles[role].preset or self.preset

    @property
    def segmentable(self) -> list[str]:
        """The roles a segmentation may be drawn on, in configuration order."""
        return list(self.segmented_on or self.roles)


class RemotePeer(Strict):
    """A peer reached by DICOM (``kind: dicom``: AE title, host, port), through Orthanc's REST
    API (``kind: orthanc-rest``: base URL), by DICOMweb (``kind: dicomweb``, PS3.18: the base
    URL of its STOW-RS, QIDO-RS and WADO-RS services) or FHIR's RESTful API (``kind: fhir``,
    a destination only: the base URL of a FHIR R4 server that receives the results as a
    DiagnosticReport, ``pipelines.outputs.fhir_report``), the last three with optional HTTP basic
    credentials, and ``fhir`` with a bearer token instead."""

    name: str = Field(description="Unique name, used in logs and the index.")
    kind: Literal["dicom", "orthanc-rest", "dicomweb", "fhir"] = Field(
        default="dicom", description="DICOM network, Orthanc's REST API, DICOMweb (PS3.18), or "
        "a FHIR R4 server (destinations only: the results as a DiagnosticReport).")
    ae_title: AETitle | None = Field(default=None, description="Its AE title (dicom).")
    host: str | None = Field(default=None, description="Host name or address (dicom).")
    port: Port | None = Field(default=None, description="TCP port (dicom).")
    url: str | None = Field(default=None, pattern=r"^https?://",
                            description="Base URL of the REST API (orthanc-rest), of the "
                            "DICOMweb services (dicomweb, e.g. Orthanc's .../dicom-web) or of "
                            "the FHIR server (fhir, e.g. HAPI FHIR's .../fhir).")
    username: str | None = Field(default=None, description="HTTP basic authentication user.")
    password: SecretStr | None = Field(default=None, description="HTTP basic authentication "
                                       "password.")
    token: SecretStr | None = Field(default=None, description="Bearer token sent as "
                                    "Authorization: Bearer (fhir; instead of username).")
    tls: bool = Field(default=False, description="DICOM over TLS (PS3.15 B.12), see tls.")

    @model_validator(mode="after")
    def _addressed(self) -> RemotePeer:
        if self.kind == "dicom":
            missing = [f for f in ("ae_title", "host", "port") if getattr(self, f) is None]
            if missing:
                raise ValueError(f"a dicom peer needs {', '.join(missing)}")
        elif self.url is None:
            raise ValueError(f"a {self.kind} peer needs url")
        if self.token is not None and self.kind != "fhir":
            raise ValueError(f"token is for fhir peers; a {self.kind} peer takes username and "
                             "password")
        if self.token is not None and self.username is not None:
            raise ValueError("a fhir peer authenticates with username and password or with a "
                             "token, not both")
        return self

    def describe(self) -> str:
        """``AE@host:port`` or the URL: how logs and the CLI name the peer."""
        if self.kind == "dicom":
            return f"{self.ae_title}@{self.host}:{self.port}"
        return str(self.url)


class Destination(RemotePeer):
    """A peer that receives the node's results: C-STORE (dicom), REST POST /instances
    (orthanc-rest), STOW-RS (dicomweb), or a FHIR transaction Bundle of a DiagnosticReport and
    its Observations (fhir, ``pipelines.outputs.fhir_report``, ``node.flow.fhir``)."""

    verify: bool = Field(
        default=True,
        description="Mark delivered only once the object is found at the destination "
        "(C-FIND at IMAGE level, Orthanc /tools/lookup, a QIDO-RS instance search, or a FHIR "
        "DiagnosticReport search by identifier).",
    )


class RetrieveSource(RemotePeer):
    """A queryable peer the node fetches missing source series from."""

    kind: Literal["dicom", "orthanc-rest", "dicomweb"] = Field(
        default="dicom", description="DICOM network, Orthanc's REST API, or DICOMweb (PS3.18).")
    method: Literal["c-get", "c-move"] = Field(
        default="c-get", description="For dicom peers: C-GET, or C-MOVE to the node's listener."
    )


class RetrieveConfig(Strict):
    """Fetching the source series a segmentation references when the node does not have it."""

    sources: list[RetrieveSource] = Field(default_factory=list,
                                          description="Peers asked in order.")
    wait: float = Field(
        default=600.0, gt=0,
        description="Seconds a segmentation waits for its source series before it fails.",
    )
    retry_interval: float = Field(default=30.0, gt=0, description="Seconds between fetch tries.")
    timeout: float = Field(default=30.0, gt=0, description="Network timeout in seconds.")
    max_instances: int = Field(
        default=5000, ge=1,
        description="Most instances one retrieval stores: orthanc-rest and dicomweb fetch "
        "nothing of a series that lists more, C-GET refuses the stores past it (0xA700); "
        "either fails the request with that reason. C-MOVE stores cannot be counted per request.",
    )


class OrthancFeed(Strict):
    """Pull mode: follow an Orthanc server's /changes feed and download what becomes stable."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", description="Instances pulled are recorded "
                      "with source orthanc:<name>.")
    url: str = Field(pattern=r"^https?://", description="Base URL of Orthanc's REST API.")
    username: str | None = Field(default=None, description="HTTP basic authentication user.")
    password: SecretStr | None = Field(default=None, description="HTTP basic authentication "
                                       "password.")
    poll_interval: float = Field(default=5.0, gt=0, description="Seconds between polls.")
    change_types: list[Literal["StableSeries", "StableStudy"]] = Field(
        default_factory=lambda: ["StableSeries"], min_length=1,
        description="Orthanc changes that make the node download a series (or a study's).")
    modalities: list[str] = Field(
        default_factory=lambda: ["CT", "MR", "SEG", "RTSTRUCT"],
        description="Series of other modalities (e.g. the node's own SR) are not downloaded.",
    )
    start: Literal["latest", "oldest"] = Field(
        default="latest",
        description="Where a feed with no saved position starts: after the last change now "
        "in Orthanc, or at its first change (downloads the whole archive).",
    )
    batch: int = Field(default=100, ge=1, le=1000, description="Changes read per request.")
    timeout: float = Field(default=30.0, gt=0, description="HTTP timeout in seconds.")


class OutboxConfig(Strict):
    """Delivery retries: back-off doubles from ``backoff_initial`` up to ``backoff_max`` seconds."""

    max_attempts: int = Field(default=10, ge=1, description="Attempts before a delivery is "
                              "dead-lettered.")
    backoff_initial: float = Field(default=2.0, gt=0, description="Seconds before the first "
                                   "retry.")
    backoff_max: float = Field(default=300.0, gt=0, description="Longest wait between retries "
                               "(seconds).")
    timeout: float = Field(default=30.0, gt=0, description="ACSE/DIMSE/network timeout in seconds.")


class Peer(Strict):
    """A known DICOM application entity and what it may do with the node.

    An association is accepted only from the ``ae_title`` of a known peer connecting from
    ``host`` (PS3.8 7.1.1.3: the calling AE title identifies the requestor; the address is checked
    because an AE title alone is trivially spoofed). ``port`` is where the peer listens, needed
    when the node sends to it or queries it.
    """

    name: str = Field(description="Unique name, used in logs.")
    ae_title: AETitle = Field(description="Calling AE title the peer uses.")
    host: str = Field(description="Host name or IP address the peer connects from and listens on.")
    port: Port | None = Field(default=None, description="Where it listens; needed when it "
                              "receives results or is queried.")
    send: bool = Field(default=True, description="May send instances to the node (C-STORE).")
    receive_results: bool = Field(default=False, description="Receives the node's results.")
    query: bool = Field(default=False, description="The node may query and retrieve from it.")
    sop_classes: list[str] | None = Field(
        default=None,
        description="SOP Class UIDs or keywords this peer may store; unset: all the node accepts.",
    )
    max_associations: int | None = Field(
        default=None, ge=1, description="Concurrent associations; limits.max_associations_per_peer "
        "if unset.")

    @field_validator("sop_classes")
    @classmethod
    def _known_classes(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        from pynetdicom import sop_class  # deferred: only configurations that list classes

        uids = []
        for item in value:
            is_uid = re.fullmatch(r"[0-9]+(\.[0-9]+)*", item)
            uid = item if is_uid else getattr(sop_class, item, None)
            if not isinstance(uid, str):
                raise ValueError(f"{item!r} is neither a UID nor a SOP class keyword")
            uids.append(str(uid))
        return uids

    @model_validator(mode="after")
    def _port_when_reached(self) -> Peer:
        if self.port is None and (self.receive_results or self.query):
            raise ValueError(f"peer {self.name!r} receives results or is queried: it needs a port")
        return self


class TLSConfig(Strict):
    """DICOM TLS (PS3.15 B.12, BCP 195 profile): PEM files for the node's identity and trust."""

    certificate: Path | None = Field(
        default=None, description="The node's certificate chain (PEM): server and client identity.")
    private_key: Path | None = Field(default=None, description="The certificate's key (PEM).")
    ca_certificates: Path | None = Field(
        default=None, description="CA certificates (PEM) trusted for peers' certificates.")
    listener: bool = Field(default=False, description="The listener accepts TLS only.")
    client_certificates: Literal["required", "optional", "none"] = Field(
        default="required",
        description="Whether peers connecting to the TLS listener must present a certificate "
        "signed by ca_certificates.",
    )

    @model_validator(mode="after")
    def _files_for_listener(self) -> TLSConfig:
        if self.listener:
            if self.certificate is None or self.private_key is None:
                raise ValueError("a TLS listener needs certificate and private_key")
            if self.client_certificates != "none" and self.ca_certificates is None:
                raise ValueError("verifying client certificates needs ca_certificates")
        return self


class ExecutorConfig(Strict):
    """Where jobs run: ``local`` spawned processes (``workers`` of them), or the Dask cluster of
    ``scheduler_address`` (docs/installation.md, "Scaling out jobs to a Dask cluster")."""

    kind: Literal["local", "dask"] = Field(default="local", description="local: a process pool "
                                           "on this machine; dask: a dask.distributed cluster.")
    scheduler_address: str | None = Field(
        default=None, description="The Dask scheduler, e.g. tcp://10.0.0.5:8786 (kind dask).")
    connect_timeout: float = Field(default=30.0, gt=0, description="Seconds to reach the "
                                   "scheduler at start.")
    task_processes: int = Field(
        default=0, ge=0, description="kind local: processes beside each job worker that run "
        "the job's feature and parametric-map tasks in parallel (one study on several cores); "
        "0 runs them in the job's own process.")

    @model_validator(mode="after")
    def _scheduler_for_dask(self) -> ExecutorConfig:
        if self.kind == "dask" and not self.scheduler_address:
            raise ValueError("executor kind dask needs scheduler_address")
        return self


class LimitsConfig(Strict):
    """Association limits and timeouts (seconds) of the listener and the node's own clients."""

    max_associations: int = Field(default=10, ge=1, description="Concurrent associations in all.")
    max_associations_per_peer: int = Field(default=4, ge=1,
                                           description="Concurrent associations of one peer.")
    acse_timeout: float = Field(
        default=30.0, gt=0, description="Association negotiation (the listener: waiting for an "
        "A-ASSOCIATE-RQ, within establish_timeout; the node's own associations: the answer).")
    dimse_timeout: float = Field(default=60.0, gt=0, description="Waiting for a DIMSE message.")
    network_timeout: float = Field(
        default=60.0, gt=0, description="An idle association; also each read or write on an "
        "accepted socket.")
    establish_timeout: float = Field(
        default=10.0, gt=0, description="The listener: seconds from accepting a connection to "
        "its whole A-ASSOCIATE-RQ, TLS handshake included: one deadline however slowly the "
        "peer sends; then the connection is closed and logged.")
    max_pending_per_address: int = Field(
        default=8, ge=1, description="The listener: connections from one address waiting for "
        "their A-ASSOCIATE-RQ at once, per receiver process; a new one beyond closes the "
        "longest-waiting. Not counted in max_associations.")
    max_pending: int = Field(
        default=64, ge=1, description="The listener: connections waiting for their "
        "A-ASSOCIATE-RQ at once from all addresses, per receiver process; a new one beyond "
        "closes the longest-waiting. Not counted in max_associations.")
    max_instance_bytes: int = Field(
        default=2 * 1024**3, ge=1024,
        description="Larger instances are refused with 0xA700 (Out of Resources).",
    )


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

_AUTHORITY = re.compile(r"(?:\[(?P<ip6>[0-9A-Fa-f:.]+)\]|(?P<name>[^\[\]:/?#@\s]+))(?::[0-9]*)?")


def host_name(authority: str) -> str | None:
    """The host of a ``Host`` field value, ``uri-host [ ":" port ]`` (RFC 9110 7.2; RFC 3986
    3.2.2): lower-cased (host names are case-insensitive), an IP address in its canonical form
    without brackets; None when the value is not of that form."""
    match = _AUTHORITY.fullmatch(authority.strip())
    if match is None:
        return None
    name = (match["ip6"] or match["name"]).lower()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return None if match["ip6"] else name


def _bare_host(value: str) -> str | None:
    """A host name or address given without a port (IPv6 with or without brackets), in the form
    :func:`host_name` gives; None when it is not one."""
    bare = value.strip()
    try:
        return str(ipaddress.ip_address(bare.removeprefix("[").removesuffix("]")))
    except ValueError:
        name = host_name(bare)
        return name if name == bare.lower() else None


class StatusConfig(Strict):
    """The status web page, ``/healthz`` and ``/metrics`` served by the node over HTTP.

    Bound to loopback by default. Bound anywhere else, it needs ``username`` and a non-empty
    ``password`` (HTTP basic authentication, RFC 7617) or a non-empty ``token``
    (``Authorization: Bearer``, RFC 6750), or the node refuses to start; put it behind an HTTPS
    reverse proxy on an untrusted network. It answers only requests whose ``Host`` names it
    (``allowed_hosts``: DNS rebinding, docs/security.md).
    """

    enabled: bool = Field(default=True, description="Serve the status page, /healthz, /metrics.")
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(default=8080, ge=0, le=65535, description="TCP port; 0 = any free port.")
    username: str | None = Field(default=None, description="HTTP basic authentication user.")
    password: SecretStr | None = Field(default=None, description="HTTP basic authentication "
                                       "password.")
    token: SecretStr | None = Field(default=None, description="Bearer token accepted instead "
                                    "of username and password.")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names or addresses (no port) that clients use to reach the server, "
        "besides `host`, localhost, 127.0.0.1 and ::1; a request whose Host header names "
        "another is answered 421 (DNS rebinding).")
    max_connections: int = Field(
        default=16, ge=1, le=256,
        description="Requests handled at once (worker threads); a request beyond them is "
        "answered 503.")
    request_timeout: float = Field(
        default=10.0, gt=0,
        description="Seconds a connection may last from accept to answer, idle or not; then "
        "it is closed.")
    stuck_after: float = Field(
        default=900.0, gt=0,
        description="/healthz fails when a pending delivery has been due for longer (seconds).")
    scheduler_stale_after: float = Field(
        default=60.0, gt=0,
        description="/healthz fails when the scheduler's heartbeat is older (seconds).")
    recent: int = Field(default=50, ge=1, le=1000, description="Rows per table on the page.")

    @field_validator("allowed_hosts")
    @classmethod
    def _names_without_port(cls, value: list[str]) -> list[str]:
        """Each entry in the form :func:`host_name` gives a ``Host`` value, so that they
        compare."""
        names = []
        for entry in value:
            name = _bare_host(entry)
            if name is None:
                raise ValueError(f"{entry!r} is not a host name or address without a port")
            names.append(name)
        return names

    @model_validator(mode="after")
    def _authenticated_off_loopback(self) -> StatusConfig:
        if (self.username is None) != (self.password is None):
            raise ValueError("username and password go together")
        if not self.enabled or self.host in LOOPBACK_HOSTS:
            return self
        if self.password is None and self.token is None:
            raise ValueError(f"the status page on {self.host} (not loopback) needs username and "
                             "password or token")
        for name, secret in (("password", self.password), ("token", self.token)):
            if secret is not None and not secret.get_secret_value().strip():
                raise ValueError(f"the status page on {self.host} (not loopback) needs a "
                                 f"non-empty {name}")
        return self

    @property
    def served_hosts(self) -> frozenset[str]:
        """The host names a request's ``Host`` may carry: ``allowed_hosts``, the address the
        server binds to and the loopback names (a rebinding DNS name is none of them)."""
        bound = _bare_host(self.host)
        return frozenset({*self.allowed_hosts, *LOOPBACK_HOSTS, *([bound] if bound else [])})


class RetentionConfig(Strict):
    """How long processed data stays on disk once it is no longer needed.

    Spool files of a series are removed ``spool_days`` after it was last received, once every job
    that reads it is done and every delivery of those jobs delivered; a job's results folder is
    removed ``results_days`` after the job finished, once its deliveries are delivered. Queued,
    running or failed jobs, pending or dead deliveries and series a retrieval waits for keep
    their files. ``null`` keeps them forever.
    """

    spool_days: float | None = Field(default=14.0, gt=0, description="Days received instances "
                                     "are kept once processed and delivered; null: forever.")
    results_days: float | None = Field(default=30.0, gt=0, description="Days result objects are "
                                       "kept once delivered; null: forever.")
    interval: float = Field(default=3600.0, gt=0, description="Seconds between clean-ups.")


class ModelRef(Strict):
    """A model package the node may run, pinned by the digest ``radiomics-node models install``
    prints (models.package: sha256 over the package's files). A package whose digest differs
    is not loaded."""

    path: Path = Field(description="Package directory or zip.")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="The package digest "
                        "radiomics-node models install printed.")


def default_rules() -> list[SeriesRule]:
    """The rule a fresh install runs: axial CT series with the basic liver preset."""
    return [SeriesRule(name="ct-liver", preset="ct-liver-basic", modality=["CT"])]


class NodeConfig(BaseSettings):
    """The whole configuration of one node."""

    model_config = SettingsConfigDict(
        env_prefix="RADIOMICS_NODE_", env_nested_delimiter="__", extra="forbid"
    )

    state_dir: Path = Field(default=Path("var"), description="Spool, index, results, quarantine.")
    log_file: Path | None = Field(
        default=None, description="Append JSON log lines here; stderr when unset."
    )
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$",
                           description="Least severe level logged.")
    listener: ListenerConfig = Field(default_factory=ListenerConfig)
    stable_after: float = Field(
        default=10.0, gt=0, description="A series is complete after this many quiet seconds."
    )
    scan_interval: float = Field(default=1.0, gt=0, description="Seconds between scheduler ticks.")
    workers: int = Field(default=1, ge=1, description="Processes that run pipelines; with "
                         "executor kind dask, jobs submitted to the cluster at once.")
    executor: ExecutorConfig = Field(default_factory=ExecutorConfig)
    max_job_attempts: int = Field(
        default=3, ge=1, description="Runs of a job that failed for a transient cause (its "
        "worker process died, the disk was full, an I/O error), before it fails."
    )
    reprocess: Literal["on_change", "never", "always"] = Field(
        default="on_change",
        description="When a processed series or SEG is complete again: run again only when its "
        "instances changed (on_change), never, or every time (always).",
    )
    min_free_bytes: int = Field(
        default=128 * 1024**2, ge=0,
        description="Below this much free disk in the spool, C-STORE is answered 0xA700.",
    )
    spool_direct_io: bool = Field(
        default=True,
        description="Write received instances to the spool past the page cache (O_DIRECT) where "
        "its file system allows; off: through the page cache.",
    )
    rules: list[SeriesRule] = Field(default_factory=default_rules)
    study_rules: list[StudyRule] = Field(
        default_factory=list,
        description="Rules of several series of one study by role (StudyRule); none by default.")
    destinations: list[Destination] = Field(default_factory=list)
    outbox: OutboxConfig = Field(default_factory=OutboxConfig)
    peers: list[Peer] = Field(default_factory=list)
    accept_unknown_peers: bool = Field(
        default=False,
        description="Accept associations from AE titles not in peers (never from a known AE title "
        "at another host); for a test bench only.",
    )
    tls: TLSConfig = Field(default_factory=TLSConfig)
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    orthanc_feeds: list[OrthancFeed] = Field(default_factory=list)
    retrieve: RetrieveConfig = Field(default_factory=RetrieveConfig)
    models: list[ModelRef] = Field(
        default_factory=list,
        description="Model packages to run, each pinned by its sha256; none by default.",
    )
    status: StatusConfig = Field(default_factory=StatusConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Environment variables win over the file (passed as init arguments)."""
        return env_settings, init_settings

    @field_validator("rules")
    @classmethod
    def _unique_rule_names(cls, rules: list[SeriesRule]) -> list[SeriesRule]:
        names = [rule.name for rule in rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(duplicates)}")
        return rules

    @model_validator(mode="after")
    def _unique_study_rule_names(self) -> NodeConfig:
        """A study rule's name is unique among ``rules`` and ``study_rules`` (jobs carry it)."""
        names = [rule.name for rule in self.rules] + [rule.name for rule in self.study_rules]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates and self.study_rules:
            raise ValueError("rule names must be unique across rules and study_rules; "
                             f"repeated: {', '.join(duplicates)}")
        return self

    @field_validator("peers")
    @classmethod
    def _unique_peer_names(cls, peers: list[Peer]) -> list[Peer]:
        names = [peer.name for peer in peers]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"peer names must be unique; repeated: {', '.join(duplicates)}")
        return peers

    @model_validator(mode="after")
    def _peers_cover_outbound(self) -> NodeConfig:
        """Once ``peers`` lists anyone, it lists everyone: a DICOM destination must be a peer
        allowed to receive results, a DICOM retrieve source a peer allowed to be queried."""
        if not self.peers:
            return self
        problems = []
        for role, flag, remotes in (("destination", "receive_results", self.destinations),
                                    ("retrieve source", "query", self.retrieve.sources)):
            for remote in remotes:
                if remote.kind != "dicom":
                    continue
                if not any(p.ae_title == remote.ae_title and p.host == remote.host
                           and getattr(p, flag) for p in self.peers):
                    problems.append(f"{role} {remote.describe()} is not a peer with {flag}: true")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @model_validator(mode="after")
    def _prior_sources_known(self) -> NodeConfig:
        """A rule's ``prior.source`` names a ``retrieve.sources`` entry that is not C-MOVE."""
        sources = {source.name: source for source in self.retrieve.sources}
        problems = []
        for where, rule in [*((f"rules.{r.name}", r) for r in self.rules),
                            *((f"study_rules.{r.name}", r) for r in self.study_rules)]:
            if rule.prior is None:
                continue
            source = sources.get(rule.prior.source)
            if source is None:
                problems.append(f"{where}.prior.source: {rule.prior.source!r} is not a "
                                f"retrieve.sources name (have: {', '.join(sources) or 'none'})")
            elif source.kind == "dicom" and source.method == "c-move":
                problems.append(f"{where}.prior.source: {source.name!r} uses method c-move, "
                                "whose instances arrive at the listener and would be processed "
                                "as a new study; use c-get, orthanc-rest or dicomweb")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def rule_presets(self) -> dict[str, str]:
        """Where each preset a job may run is configured (``rules.<name>``,
        ``study_rules.<name>.roles.<role>``) -> the preset, in configuration order."""
        found = {f"rules.{rule.name}": rule.preset for rule in self.rules}
        for study in self.study_rules:
            found.update({f"study_rules.{study.name}.roles.{role}": study.preset_of(role)
                          for role in study.roles})
        return found

    @property
    def spool_dir(self) -> Path:
        return self.state_dir / "spool"

    @property
    def results_dir(self) -> Path:
        return self.state_dir / "results"

    @property
    def priors_dir(self) -> Path:
        """Where the prior studies of jobs are fetched to (``job-<id>/``), apart from the spool."""
        return self.state_dir / "priors"

    @property
    def models_dir(self) -> Path:
        return self.state_dir / "models"

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def index_path(self) -> Path:
        return self.state_dir / "index.sqlite3"


class ConfigError(Exception):
    """A configuration file that cannot be used; ``problems`` holds one plain sentence each."""

    def __init__(self, path: Path | None, problems: list[str]):
        self.path = path
        self.problems = problems
        where = str(path) if path else "configuration"
        super().__init__(f"{where}: " + "; ".join(problems))


def names_a_file(preset: str) -> bool:
    """Whether a rule's ``preset`` is the path of a preset YAML file rather than a shipped
    preset's name: it ends in ``.yaml``/``.yml`` or holds a path separator, the test
    ``pipelines.science.presets.load_preset`` applies."""
    return preset.endswith((".yaml", ".yml")) or any(sep in preset for sep in ("/", "\\"))


def _preset_files(config: NodeConfig, folder: Path) -> list[str]:
    """Resolve each rule's preset file (and each study rule's and its roles') against ``folder``
    (where the configuration file is) and load it with
    ``pipelines.science.presets.load_preset``, so that a site's own preset with a typo stops the
    node at start, not each job; one problem per preset that cannot be loaded. Shipped presets
    are named, not read here (``config check`` loads them)."""
    files: list[tuple[str, BaseModel]] = [
        (f"rules.{rule.name}", rule) for rule in config.rules if names_a_file(rule.preset)]
    for study in config.study_rules:
        if names_a_file(study.preset):
            files.append((f"study_rules.{study.name}", study))
        files += [(f"study_rules.{study.name}.roles.{name}", role)
                  for name, role in study.roles.items()
                  if role.preset is not None and names_a_file(role.preset)]
    if not files:
        return []
    from pipelines.science.presets import load_preset  # reads pyradiomics' schema: only when needed

    problems = []
    for where, owner in files:
        path = str((folder / owner.preset).resolve())  # type: ignore[attr-defined]
        owner.preset = path  # type: ignore[attr-defined]
        try:
            load_preset(path)
        except ValueError as exc:  # PresetError: one line naming the file, key and reason
            problems.append(f"{where}.preset: {' '.join(str(exc).split())}")
    return problems


def _describe(error: dict[str, Any]) -> str:
    location = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown field (check the spelling)"
    value = error.get("input")
    shown = "" if isinstance(value, dict | list) or value is None else f" (got {value!r})"
    return f"{location}: {message}{shown}"


def load_config(path: Path | None = None) -> NodeConfig:
    """Read and validate ``path`` (or only defaults and environment when None).

    Raises ConfigError with one readable line per problem: YAML syntax with line and column, or
    the dotted field path, the reason and the offending value; then every rule's preset file is
    resolved against the file's folder and loaded (:func:`_preset_files`).
    """
    data: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(path, [f"cannot read: {exc.strerror}"]) from exc
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
            problem = getattr(exc, "problem", exc)
            raise ConfigError(path, [f"{where}not valid YAML ({problem})"]) from exc
        if not isinstance(data, dict):
            raise ConfigError(path, ["the top level must be a mapping of field: value"])
    try:
        config = NodeConfig(**data)
    except ValidationError as exc:
        raise ConfigError(path, [_describe(e) for e in exc.errors()]) from exc
    problems = _preset_files(config, Path(path).parent if path is not None else Path.cwd())
    if problems:
        raise ConfigError(path, problems)
    return config
