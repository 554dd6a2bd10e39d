"""OHIF Viewer on real peers, for tests/integration/test_ohif.py and docs/ohif_screenshots.py.

- :func:`dicomweb_orthanc`: Debian's Orthanc with its DICOMweb plugin (``orthanc-dicomweb``) on
  free loopback ports, its own storage, stopped by PID (``peers.orthanc``).
- :func:`ohif_server`: one same-origin HTTP server on 127.0.0.1 that serves OHIF's prebuilt
  bundle (npm ``@ohif/app``, its ``dist/``, installed by scripts/ohif.sh), answers every path
  that is not a file of the bundle with ``index.html`` (OHIF routes such as ``/viewer``), serves
  its own ``/app-config.js`` (one DICOMweb data source whose roots are this server's
  ``/dicom-web``) and proxies ``/dicom-web/*`` to Orthanc's ``/dicom-web/``.
- :func:`chromium` and :func:`open_viewer`: headless system Chromium (``/usr/bin/chromium``)
  driven by Playwright (PyPI; no browser download), WebGL through SwiftShader; every console
  message and page error of the page is kept in :class:`ViewerPage`.
- :func:`view_study`: opens each result object by double-clicking its thumbnail, as a reader
  does, and reads back what OHIF holds (its services on ``window.services``, Cornerstone3D on
  ``window.cornerstone`` and ``window.cornerstoneTools``), with screenshots;
  :func:`time_report_open` times the reading report from the navigation.
- :func:`make_demo_outputs` and :func:`view_demo_outputs`: the synthetic demo study processed
  by the node, stored in Orthanc and viewed, end to end.

Nothing here stays running after its ``with`` block: the HTTP server is shut down and joined,
Orthanc is stopped by PID, Chromium is closed by Playwright.
"""

from __future__ import annotations

import json
import mimetypes
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from tests.conftest import REPO, free_port
from tests.integration.peers import OrthancServer, orthanc

OHIF_VERSION = "3.13.2"
"""The version scripts/ohif.sh installs (its tarball's sha512 is pinned there)."""

OHIF_DIST = REPO / "var" / "ohif" / OHIF_VERSION / "dist"
DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

CHROMIUM_ARGS = (
    "--no-sandbox",
    # Cornerstone3D renders with WebGL2: without a GPU, ANGLE on SwiftShader provides it
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--ignore-gpu-blocklist",
)

_TYPES = {".js": "application/javascript", ".mjs": "application/javascript",
          ".wasm": "application/wasm", ".css": "text/css", ".json": "application/json",
          ".svg": "image/svg+xml", ".woff2": "font/woff2", ".html": "text/html; charset=utf-8",
          ".ico": "image/x-icon", ".png": "image/png"}

# hop-by-hop and length headers are not passed through the proxy: the server sets its own
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding",
        "proxy-authenticate", "proxy-authorization", "te", "trailers", "upgrade", "host"}


def missing_tools() -> list[str]:
    """What this harness needs and does not find: Orthanc's DICOMweb plugin, chromium, OHIF's
    bundle, Playwright (all installed by scripts/setup.sh --system-tools and scripts/ohif.sh)."""
    missing = []
    if not DICOMWEB_PLUGIN.is_file():
        missing.append(str(DICOMWEB_PLUGIN))
    if not Path(CHROMIUM).is_file():
        missing.append("chromium")
    if not (OHIF_DIST / "index.html").is_file():
        missing.append(str(OHIF_DIST))
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing.append("playwright (PyPI)")
    return missing


@contextmanager
def dicomweb_orthanc(workdir: Path, host: str | None = None,
                     auth: tuple[str, str] | None = None) -> Iterator[OrthancServer]:
    """Orthanc with the DICOMweb plugin at ``/dicom-web/`` (full study and series metadata, so
    one QIDO/WADO metadata request per series); ``host`` (``127.0.0.1:port``) is the authority
    Orthanc writes into BulkDataURIs, the proxy's when clients reach it through one; ``auth``
    (user, password): HTTP basic authentication required."""
    dicomweb: dict[str, Any] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": False,
                                "Ssl": False, "StudiesMetadata": "Full",
                                "SeriesMetadata": "Full"}
    if host:
        dicomweb["Host"] = host
    settings = {"Plugins": [str(DICOMWEB_PLUGIN)], "DicomWeb": dicomweb}
    with orthanc(workdir, {}, settings=settings, auth=auth) as server:
        plugins = server.http.get("/plugins").raise_for_status().json()
        if "dicom-web" not in plugins:
            raise RuntimeError(f"Orthanc did not load {DICOMWEB_PLUGIN}: plugins {plugins}")
        yield server


def upload(server: OrthancServer, paths: Iterable[Path]) -> list[str]:
    """Store each file by REST ``POST /instances``; the Orthanc ids, in order. Raises unless
    Orthanc answers ``Success`` for each (``AlreadyStored`` is refused too: a test uploads each
    object once)."""
    ids = []
    for path in paths:
        answer = server.http.post("/instances", content=path.read_bytes()).raise_for_status()
        body = answer.json()
        if body.get("Status") != "Success":
            raise RuntimeError(f"Orthanc stored {path} as {body}")
        ids.append(body["ID"])
    return ids


def app_config(root: str) -> str:
    """OHIF's ``window.config``: one DICOMweb data source whose QIDO, WADO-RS and WADO-URI roots
    are ``root``; no onboarding tour, automatic cine or CPU-fallback dialog in front of the
    viewport."""
    source = {
        "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
        "sourceName": "orthanc",
        "configuration": {
            "friendlyName": "Orthanc (test)",
            "name": "orthanc",
            "wadoUriRoot": root,
            "qidoRoot": root,
            "wadoRoot": root,
            "qidoSupportsIncludeField": False,
            "imageRendering": "wadors",
            "thumbnailRendering": "wadors",
            "enableStudyLazyLoad": True,
            "supportsFuzzyMatching": False,
            "supportsWildcard": True,
            "staticWado": False,
            "singlepart": "bulkdata,video",
            "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
            "omitQuotationForMultipartRequest": True,
        },
    }
    config = {
        "routerBasename": "/",
        "extensions": [],
        "modes": [],
        # no onboarding tour and no cine player (OHIF starts one for OT images) over the
        # viewport
        "customizationService": {"ohif.tours": {"$set": []},
                                 "autoCineModalities": {"$set": []}},
        "showStudyList": True,
        "maxNumberOfWebWorkers": 2,
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": False,
        "showLoadingIndicator": False,
        "strictZSpacingForVolumeViewport": True,
        "defaultDataSourceName": "orthanc",
        "investigationalUseDialog": {"option": "never"},
        "dataSources": [source],
    }
    return f"window.config = {json.dumps(config, indent=2)};\n"


class _Handler(BaseHTTPRequestHandler):
    """Files of the bundle, ``index.html`` for any other path, ``/app-config.js`` from memory,
    ``/dicom-web/*`` from Orthanc."""

    server: _OhifHTTPServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        self.server.requests.append(format % args)

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path.startswith("/dicom-web/"):
            self._proxy()
        elif path == "/app-config.js":
            self._send(200, "application/javascript", self.server.config_js.encode())
        else:
            self._file(path)

    def _send(self, status: int, content_type: str, body: bytes,
              headers: Iterable[tuple[str, str]] = ()) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _file(self, path: str) -> None:
        dist = self.server.dist
        candidate = (dist / path.lstrip("/")).resolve()
        if not candidate.is_relative_to(dist) or not candidate.is_file():
            # an OHIF route (/viewer, /segmentation, ...) or a missing asset: the SPA's page,
            # as the bundle's own _redirects and serve.json say
            if "." in path.rsplit("/", 1)[-1]:
                self._send(404, "text/plain", b"not found")
                return
            candidate = dist / "index.html"
        kind = _TYPES.get(candidate.suffix) or mimetypes.guess_type(candidate.name)[0]
        self._send(200, kind or "application/octet-stream", candidate.read_bytes(),
                   [("Cache-Control", "no-store")])

    def _proxy(self) -> None:
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
        try:
            answer = self.server.orthanc.get(self.path, headers=headers)
        except httpx.HTTPError as error:
            self._send(502, "text/plain", f"Orthanc: {error}".encode())
            return
        self.server.proxied.append((self.path, answer.status_code, len(answer.content)))
        passed = [(k, v) for k, v in answer.headers.items()
                  if k.lower() not in _HOP and k.lower() != "content-type"]
        self._send(answer.status_code, answer.headers.get("content-type", "text/plain"),
                   answer.content, passed)


class _OhifHTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, dist: Path, config_js: str, orthanc_url: str):
        super().__init__(("127.0.0.1", port), _Handler)
        self.dist = dist.resolve()
        self.config_js = config_js
        self.orthanc = httpx.Client(base_url=orthanc_url, timeout=120)
        self.requests: list[str] = []
        self.proxied: list[tuple[str, int, int]] = []


@dataclass(frozen=True)
class OhifSite:
    """The running server: its base URL and what it proxied (path, status, bytes)."""

    url: str
    proxied: list[tuple[str, int, int]]


@contextmanager
def ohif_server(orthanc_url: str, port: int | None = None,
                dist: Path = OHIF_DIST) -> Iterator[OhifSite]:
    """Serve ``dist`` and proxy ``/dicom-web/`` to ``orthanc_url`` (Orthanc's REST base) on
    ``127.0.0.1:port`` (a free port unless given); shut down and joined on exit."""
    port = port or free_port()
    base = f"http://127.0.0.1:{port}"
    server = _OhifHTTPServer(port, dist, app_config(f"{base}/dicom-web"), orthanc_url)
    thread = threading.Thread(target=server.serve_forever, name="ohif-http", daemon=True)
    thread.start()
    try:
        yield OhifSite(base, server.proxied)
    finally:
        server.shutdown()
        server.server_close()
        server.orthanc.close()
        thread.join(10)


ROUTE_CRASH = "Error Boundary"
"""What OHIF's error boundary writes when a route's component threw: the viewer stops there."""


@dataclass
class ConsoleEntry:
    """One console message (``type`` as Chromium names it: log, warning, error, ...) or, with
    type ``pageerror``, an uncaught exception; ``location`` is the script URL when known."""

    type: str
    text: str
    location: str = ""

    def __str__(self) -> str:
        return f"[{self.type}] {self.text[:500]}" + (f" ({self.location})" if self.location
                                                       else "")

    @property
    def is_error(self) -> bool:
        """A console error, an uncaught page error, or OHIF's route error boundary (which OHIF
        3.13.2 logs with console.debug: "Route viewer Error Boundary <error>")."""
        return self.type in ("error", "pageerror") or ROUTE_CRASH in self.text


@dataclass
class ViewerPage:
    """A Playwright page on OHIF and everything its console said since it was opened; which
    viewport screenshots needed a scroll before OHIF painted (``nudged``)."""

    page: Any
    console: list[ConsoleEntry] = field(default_factory=list)
    nudged: list[str] = field(default_factory=list)

    def errors(self) -> list[ConsoleEntry]:
        """Every entry that :attr:`ConsoleEntry.is_error`, in order."""
        return [e for e in self.console if e.is_error]

    def evaluate(self, script: str, arg: Any = None) -> Any:
        """The value of ``script`` (a JavaScript function expression, may be async) in the
        page, called with ``arg``."""
        return self.page.evaluate(script, arg)

    def wait_for(self, check: str | Callable[[], Any], arg: Any = None,
                 timeout_s: float = 60.0, what: str = "") -> Any:
        """Poll ``check`` (a script for :meth:`evaluate`, called with ``arg``, or a Python
        callable) every 250 ms until it returns a truthy value, and return that value; raise
        TimeoutError naming ``what`` and the last page errors after ``timeout_s``."""
        from playwright.sync_api import Error as PlaywrightError

        deadline = time.monotonic() + timeout_s
        last_error = ""
        while True:
            try:
                value = check() if callable(check) else self.page.evaluate(check, arg)
            except PlaywrightError as error:  # a script that ran while OHIF swapped a viewport
                value, last_error = None, str(error).splitlines()[0]
            if value:
                return value
            if time.monotonic() > deadline:
                errors = "\n".join(str(e) for e in self.errors()[-10:])
                raise TimeoutError(f"waited {timeout_s:.0f} s for {what or check}; last "
                                   f"script error: {last_error or 'none'}; page errors:\n"
                                   f"{errors}")
            self.page.wait_for_timeout(250)


@contextmanager
def chromium(headless: bool = True) -> Iterator[Any]:
    """A Playwright Browser on the system chromium with WebGL through SwiftShader; closed on
    exit."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=headless,
                                             args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def open_viewer(browser: Any, url: str, size: tuple[int, int] = (1400, 900),
                on_console: Callable[[ConsoleEntry], None] | None = None) -> Iterator[ViewerPage]:
    """A new page of ``size`` (CSS pixels) in its own context, navigated to ``url`` (not
    waiting for the viewer's data); every console message and page error is recorded from
    before the navigation. The context is closed on exit."""
    context = browser.new_context(viewport={"width": size[0], "height": size[1]},
                                  service_workers="block")
    context.add_init_script(INIT_SCRIPT)
    page = context.new_page()
    viewer = ViewerPage(page)

    def message(msg: Any) -> None:
        location = msg.location.get("url", "") if msg.location else ""
        entry = ConsoleEntry(msg.type, msg.text, location)
        viewer.console.append(entry)
        if on_console:
            on_console(entry)

    def page_error(error: Any) -> None:
        entry = ConsoleEntry("pageerror", f"{error.name}: {error.message}\n{error.stack or ''}")
        viewer.console.append(entry)
        if on_console:
            on_console(entry)

    page.on("console", message)
    page.on("pageerror", page_error)
    try:
        page.goto(url, wait_until="domcontentloaded")
        yield viewer
    finally:
        context.close()


# --- what OHIF holds, read in the page -----------------------------------------------------
# OHIF 3.13.2 puts its services on window.services and Cornerstone3D core and tools on
# window.cornerstone and window.cornerstoneTools (extensions/cornerstone init, 89.bundle.*.js).
# Each script returns null while what it reads is not there yet (wait_for polls again).

INIT_SCRIPT = """window.firstViewport = () => {
  const cs = window.cornerstone;
  const engine = cs && cs.getRenderingEngines && cs.getRenderingEngines()[0];
  return (engine && engine.getViewports()[0]) || null;
};"""
"""Added to every page before OHIF's scripts: ``firstViewport()``, the Cornerstone viewport of
OHIF's one-viewport layout, or null while OHIF replaces it."""

JS_DISPLAY_SETS = """() => {
  const service = window.services && window.services.displaySetService;
  if (!service) return null;
  return service.getActiveDisplaySets().map(d => ({
    uid: d.displaySetInstanceUID, series: d.SeriesInstanceUID, modality: d.Modality,
    description: d.SeriesDescription || '', handler: d.SOPClassHandlerId || '',
    sop: d.SOPInstanceUID || null}));
}"""

JS_LAID_OUT = """() => {
  const grid = window.services && window.services.viewportGridService;
  const state = grid && grid.getState();
  const active = state && state.activeViewportId && state.viewports.get(state.activeViewportId);
  return !!(active && active.displaySetInstanceUIDs && active.displaySetInstanceUIDs.length);
}"""

JS_SR = """(uid) => {
  const ds = window.services.displaySetService.getDisplaySetByUID(uid);
  if (!ds || !ds.isLoaded || !ds.measurements) return null;
  const annotations = window.cornerstoneTools.annotation.state.getAllAnnotations()
    .filter(a => a.metadata && a.metadata.toolName === 'DICOMSRDisplay');
  const viewport = firstViewport();
  return {
    measurements: ds.measurements.map(m => ({
      tracking_uid: m.TrackingUniqueIdentifier, tracking_id: m.TrackingIdentifier,
      loaded: !!m.loaded, sop: m.ReferencedSOPInstanceUID || null,
      frame: m.frameNumber || null, image_id: m.imageId || null,
      labels: (m.labels || []).map(l => ({label: String(l.label), value: String(l.value)})),
      coords: (m.coords || []).map(c => ({value_type: c.ValueType, graphic_type: c.GraphicType,
                                          data: Array.from(c.GraphicData || [])}))})),
    annotations: annotations.map(a => ({
      uid: a.annotationUID, image_id: a.metadata.referencedImageId || null,
      points: (a.data.handles.points || []).map(p => Array.from(p))})),
    viewport_image: viewport && viewport.getCurrentImageId ? viewport.getCurrentImageId() : null,
  };
}"""

JS_SEG = """(uid) => {
  const service = window.services.segmentationService;
  const segmentation = service.getSegmentation(uid);
  if (!segmentation || !segmentation.representationData.Labelmap) return null;
  const cs = window.cornerstone;
  const labelmap = segmentation.representationData.Labelmap;
  const layers = labelmap.labelmaps ? Object.values(labelmap.labelmaps)
                                    : [{imageIds: labelmap.imageIds, labelToSegmentIndex: null}];
  const sums = {};
  for (const layer of layers) {
    for (const imageId of layer.imageIds || []) {
      const image = cs.cache.getImage(imageId);
      if (!image) return null;  // not loaded yet
      const plane = cs.metaData.get('imagePlaneModule', image.referencedImageId);
      const data = image.voxelManager ? image.voxelManager.getScalarData() : image.getPixelData();
      const o = plane.imagePositionPatient, r = plane.rowCosines, c = plane.columnCosines;
      const dx = plane.columnPixelSpacing, dy = plane.rowPixelSpacing, columns = image.columns;
      for (let k = 0; k < data.length; k++) {
        const label = data[k];
        if (!label) continue;
        const index = layer.labelToSegmentIndex ? layer.labelToSegmentIndex[label] : label;
        const col = k % columns, row = (k - col) / columns;
        const s = sums[index] || (sums[index] = [0, 0, 0, 0]);
        s[0] += 1;
        for (let a = 0; a < 3; a++) s[a + 1] += o[a] + r[a] * col * dx + c[a] * row * dy;
      }
    }
  }
  const viewport = firstViewport();
  if (!viewport) return null;
  const shown = service.getSegmentationRepresentations(viewport.id, {segmentationId: uid});
  return {
    label: segmentation.label,
    shown_in_viewport: shown.length > 0 && shown.some(r => r.visible !== false),
    segments: Object.values(segmentation.segments).filter(Boolean).map(s => {
      const sum = sums[s.segmentIndex] || [0, 0, 0, 0];
      return {index: s.segmentIndex, label: s.label, voxels: sum[0],
              centroid: sum[0] ? [sum[1] / sum[0], sum[2] / sum[0], sum[3] / sum[0]] : null};
    }),
  };
}"""

JS_MAP = """([uid, points]) => {
  const ds = window.services.displaySetService.getDisplaySetByUID(uid);
  const cs = window.cornerstone;
  const volume = cs.cache.getVolume(uid);
  if (!ds || !ds.isLoaded || !volume) return null;
  const viewport = firstViewport();
  if (!viewport) return null;
  const dims = volume.dimensions;
  return {
    in_viewport: viewport.getActors().some(a => a.referencedId === uid),
    dimensions: Array.from(dims),
    samples: points.map(p => {
      const ijk = cs.utilities.transformWorldToIndex(volume.imageData, p).map(Math.round);
      const inside = ijk.every((v, a) => v >= 0 && v < dims[a]);
      return {ijk, value: inside ? volume.voxelManager.getAtIJK(ijk[0], ijk[1], ijk[2]) : null};
    }),
  };
}"""

JS_IMAGE = """([sop, pixels]) => {
  const cs = window.cornerstone;
  const viewport = firstViewport();
  const imageId = viewport && viewport.getCurrentImageId ? viewport.getCurrentImageId() : null;
  if (!imageId || !imageId.includes('/instances/' + sop + '/')) return null;
  const image = cs.cache.getImage(imageId);
  if (!image) return null;
  const data = image.getPixelData(), n = image.numberOfComponents || (image.color ? 3 : 1);
  const at = (row, col) => (row * image.columns + col) * n;
  return {image_id: imageId, rows: image.rows, columns: image.columns, components: n,
          samples: pixels.map(([r, c]) => Array.from(data.slice(at(r, c), at(r, c) + n)))};
}"""

JS_CURRENT_IMAGE = """() => {
  const viewport = firstViewport();
  return viewport && viewport.getCurrentImageId ? viewport.getCurrentImageId() || null : null;
}"""

JS_VIEWPORT_BOX = """() => {
  const viewport = firstViewport();
  if (!viewport) return null;
  const r = viewport.element.getBoundingClientRect();
  return {x: r.x, y: r.y, width: r.width, height: r.height};
}"""


@dataclass(frozen=True)
class StudyObjects:
    """What :func:`view_study` opens: the study, the series of the reading report, the derived
    SEG, each parametric map and the summary, and the points it reads back: for each map's
    series, world points (patient coordinates, mm) whose voxel values it reads from OHIF's
    volume; for the summary, (row, column) pixels it reads from OHIF's image."""

    study_uid: str
    report_series: str
    seg_series: str
    map_series: tuple[str, ...]
    summary_series: str
    summary_sop: str
    map_points: dict[str, list[list[float]]]
    summary_pixels: list[tuple[int, int]]


def _thumbnail(viewer: ViewerPage, display_set: str) -> Any:
    # OHIF's study browser gives each thumbnail the id "thumbnail-<displaySetInstanceUID>"
    return viewer.page.locator(f'[id="thumbnail-{display_set}"]')


DRAWN_PIXELS = 2000
"""Coloured pixels an object adds to the viewport of the grey CT when it is drawn (outlines,
labels, overlays, the summary's colours): see :func:`coloured_pixels`."""


def coloured_pixels(path: Path | str) -> int:
    """Pixels of a screenshot whose channels differ by more than 60: the CT is grey, so these
    are what is drawn in colour (plus the few coloured controls every viewport has)."""
    import numpy as np
    from PIL import Image

    rgb = np.asarray(Image.open(path).convert("RGB")).astype(int)
    return int(((rgb.max(-1) - rgb.min(-1)) > 60).sum())


def _viewport_shot(viewer: ViewerPage, path: Path) -> Path:
    """Screenshot of the viewport, or of the whole page when OHIF shows none (an error)."""
    try:
        box = viewer.wait_for(JS_VIEWPORT_BOX, timeout_s=5, what="a viewport")
    except TimeoutError:
        box = None
    viewer.page.screenshot(path=str(path), clip=box)
    return path


def _unless_crashed(viewer: ViewerPage, seen: int,
                    check: Callable[[], Any]) -> Callable[[], Any]:
    """``check``, raising RuntimeError once OHIF's route error boundary has logged a crash
    after the first ``seen`` console entries (nothing more will load)."""
    def checked() -> Any:
        crashes = [e for e in viewer.console[seen:] if ROUTE_CRASH in e.text]
        if crashes:
            raise RuntimeError(f"OHIF's viewer route crashed: {crashes[0].text[:800]}")
        return check()
    return checked


def report_placed(viewer: ViewerPage, display_set: str) -> dict[str, Any] | None:
    """What OHIF holds of the SR display set (``JS_SR``) once it is loaded and every measurement
    with an outline is placed on an image; None before."""
    state = viewer.evaluate(JS_SR, display_set)
    if not state:
        return None
    outlined = [m for m in state["measurements"] if m["coords"]]
    return state if all(m["loaded"] for m in outlined) else None


def time_report_open(viewer: ViewerPage, report_series: str, started: float,
                     timeout_s: float = 90.0) -> float:
    """Seconds from ``started`` (``time.monotonic()`` before ``viewer`` navigated to the study)
    until every outlined measurement of the SR series ``report_series`` is placed, its
    thumbnail double-clicked as soon as OHIF lists it and has laid out its viewport (before
    that, OHIF 3.13.2 throws "ViewportId is required to set display sets for viewport")."""
    def listed() -> str | None:
        if not viewer.evaluate(JS_LAID_OUT):
            return None
        sets = viewer.evaluate(JS_DISPLAY_SETS) or []
        return next((d["uid"] for d in sets if d["series"] == report_series), None)

    uid = viewer.wait_for(listed, timeout_s=timeout_s, what="the report's display set")
    seen = len(viewer.console)
    _thumbnail(viewer, uid).dblclick()
    viewer.wait_for(_unless_crashed(viewer, seen, lambda: report_placed(viewer, uid)),
                    timeout_s=timeout_s, what="the report's measurements placed")
    return time.monotonic() - started


def _wait_drawn(viewer: ViewerPage, shot: Path, baseline: int, timeout_s: float = 25,
                nudge_after_s: float = 12) -> bool:
    """Whether the viewport comes to show :data:`DRAWN_PIXELS` more coloured pixels than
    ``baseline`` (the grey CT alone) within ``timeout_s``; its last screenshot is ``shot``.
    After ``nudge_after_s`` without, it keeps that screenshot (``<shot>-before-scroll.png``),
    scrolls the viewport one image forward and back, as a reader does when an overlay does not
    show, and notes it in ``viewer.nudged``: OHIF 3.13.2 now and then paints a parametric map's
    fusion only at the next render."""
    started = time.monotonic()
    nudged = False
    while True:
        viewer.page.wait_for_timeout(500)
        _viewport_shot(viewer, shot)
        if coloured_pixels(shot) >= baseline + DRAWN_PIXELS:
            return True
        waited = time.monotonic() - started
        if waited > timeout_s:
            return False
        if waited > nudge_after_s and not nudged:
            box = viewer.evaluate(JS_VIEWPORT_BOX)
            shutil.copyfile(shot, shot.with_name(f"{shot.stem}-before-scroll.png"))
            if box:
                viewer.page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
                viewer.page.mouse.wheel(0, 100)
                viewer.page.wait_for_timeout(300)
                viewer.page.mouse.wheel(0, -100)
                viewer.nudged.append(shot.stem)
            nudged = True


def view_study(viewer: ViewerPage, objects: StudyObjects, shots: Path,
               started: float, timeout_s: float = 90.0) -> dict[str, Any]:
    """Drive OHIF as a reader would, on the page ``viewer`` just navigated to the study
    (``started``: ``time.monotonic()`` before the navigation), and return what OHIF holds.

    1. waits until OHIF lists a display set for every series of ``objects``;
    2. double-clicks the reading report's thumbnail and waits until OHIF has loaded it and
       placed every measurement that has an outline (``sr``);
    3. the summary's thumbnail, until its image is in the viewport (``summary``: the pixels
       at ``objects.summary_pixels``);
    4. the derived SEG's thumbnail, answers OHIF's "open this segmentation?" with Yes, until
       every labelmap image is loaded (``seg``: per segment its voxel count and centroid in
       patient coordinates, from the labelmap images and their source images' planes);
    5. each map's thumbnail, until its volume is loaded (``maps``: the volume's values at
       ``objects.map_points``, and whether it is an actor of the viewport).

    After each step it waits (:func:`_wait_drawn`, 25 s at most, one scroll nudge) until the
    viewport shows :data:`DRAWN_PIXELS` more coloured pixels than the first image OHIF showed
    (the CT, ``start-viewport.png``), then
    saves screenshots of the page and of the viewport in ``shots`` (``<step>.png``,
    ``<step>-viewport.png``; steps ``sr``, ``summary``, ``seg``, ``map-<n>``; a step whose
    object is not drawn is listed in ``not_drawn``). ``timings``: seconds from the navigation
    to the study's display sets and to the first image, and from each double-click to the
    object held by OHIF (``<step>``) and drawn (``<step> drawn``). A step that does not finish
    within ``timeout_s`` is recorded under ``failures`` and the next is tried."""
    shots.mkdir(parents=True, exist_ok=True)
    observed: dict[str, Any] = {"timings": {}, "failures": {}, "maps": {}, "shots": {},
                                "not_drawn": [], "nudged": []}
    wanted = {objects.report_series, objects.seg_series, objects.summary_series,
              *objects.map_series}

    def listed() -> Any:
        sets = viewer.evaluate(JS_DISPLAY_SETS)
        return sets if sets and wanted <= {d["series"] for d in sets} else None

    sets = viewer.wait_for(listed, timeout_s=timeout_s, what="the study's display sets")
    # timings: from the navigation (display sets, first image), then from each double-click
    observed["timings"]["display_sets"] = time.monotonic() - started
    observed["display_sets"] = sets
    by_series = {d["series"]: d for d in sets}
    # the hanging protocol's first image (the CT): the viewport before any overlay
    viewer.wait_for(JS_CURRENT_IMAGE, timeout_s=timeout_s, what="the first image")
    observed["timings"]["first_image"] = time.monotonic() - started
    viewer.page.wait_for_timeout(1500)
    observed["shots"]["start"] = str(_viewport_shot(viewer, shots / "start-viewport.png"))

    baseline = coloured_pixels(shots / "start-viewport.png")

    def step(name: str, series: str, ready: Callable[[str], Any],
             after_click: Callable[[], None] | None = None) -> Any:
        uid = by_series[series]["uid"]
        clicked = time.monotonic()
        seen = len(viewer.console)
        try:
            _thumbnail(viewer, uid).dblclick()
            if after_click:
                after_click()
            value = viewer.wait_for(_unless_crashed(viewer, seen, lambda: ready(uid)),
                                    timeout_s=timeout_s, what=name)
        except Exception as error:  # recorded: the test reports it
            observed["failures"][name] = f"{type(error).__name__}: {error}"
            value = None
        observed["timings"][name] = time.monotonic() - clicked
        if _wait_drawn(viewer, shots / f"{name}-viewport.png", baseline):
            observed["timings"][f"{name} drawn"] = time.monotonic() - clicked
        else:
            observed["not_drawn"].append(name)
        viewer.page.screenshot(path=str(shots / f"{name}.png"))
        observed["shots"][name] = str(shots / f"{name}.png")
        return value

    observed["sr"] = step("sr", objects.report_series, lambda uid: report_placed(viewer, uid))

    pixels = [list(p) for p in objects.summary_pixels]
    observed["summary"] = step(
        "summary", objects.summary_series,
        lambda uid: viewer.evaluate(JS_IMAGE, [objects.summary_sop, pixels]))

    def answer_yes() -> None:
        viewer.page.get_by_role("button", name="Yes").click(timeout=timeout_s * 1000)

    def seg_ready(uid: str) -> Any:
        state = viewer.evaluate(JS_SEG, uid)
        return state if state and state["segments"] and state["shown_in_viewport"] else None

    observed["seg"] = step("seg", objects.seg_series, seg_ready, after_click=answer_yes)

    for number, series in enumerate(objects.map_series, 1):
        points = objects.map_points[series]
        observed["maps"][series] = step(
            f"map-{number}", series,
            lambda uid, points=points: viewer.evaluate(JS_MAP, [uid, points]))
    return observed


# --- the demo study's outputs in OHIF, end to end -------------------------------------------

DEMO_SHAPE = (40, 256, 256)
"""(slices, rows, columns) of the synthetic CT: two lesions, every output object, ~25 s."""

SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
PARAMETRIC_MAP_STORAGE = "1.2.840.10008.5.1.4.1.1.30"
SECONDARY_CAPTURE_STORAGE = "1.2.840.10008.5.1.4.1.1.7"


@dataclass(frozen=True)
class DemoOutputs:
    """The synthetic study (CT slices, its lesion SEG) and what ``job_plan`` wrote for it
    with ct-liver-crlm and the shipped demonstration model: the reading report (the SR a viewer
    shows), every other SR, the derived SEG, the parametric maps and the summary image."""

    ct: list[Path]
    input_seg: Path
    report: Path
    other_reports: list[Path]
    seg: Path
    maps: list[Path]
    summary: Path
    seconds: float

    def files(self) -> list[Path]:
        """Every file, in the order they are stored: the CT, the input SEG, the results."""
        return [*self.ct, self.input_seg, self.report, *self.other_reports, self.seg,
                *self.maps, self.summary]


def make_demo_outputs(workdir: Path) -> DemoOutputs:
    """Write the synthetic study of :data:`DEMO_SHAPE` under ``workdir/study`` and process it
    into ``workdir/results``."""
    from demo.synthetic import write_synthetic_study
    from models.shipped import DEMO_PACKAGE, DEMO_SHA256
    from node.flow.executor import run_in_process
    from pipelines.process import job_plan

    study = write_synthetic_study(workdir / "study", shape=DEMO_SHAPE)
    started = time.monotonic()
    result = run_in_process(job_plan(study.ct_paths, study.seg_path, "ct-liver-crlm",
                                     workdir / "results", models=[(DEMO_PACKAGE, DEMO_SHA256)]))
    seconds = time.monotonic() - started
    report = result.reading_report
    by_class: dict[str, list[Path]] = {}
    for output in result.objects:
        by_class.setdefault(output.sop_class_uid, []).append(output.path)
    others = [o.path for o in result.objects if o.path != report.path
              and o.sop_class_uid.startswith("1.2.840.10008.5.1.4.1.1.88.")]
    [seg] = by_class[SEG_STORAGE]
    [summary] = by_class[SECONDARY_CAPTURE_STORAGE]
    return DemoOutputs(list(map(Path, study.ct_paths)), Path(study.seg_path), report.path,
                       others, seg, by_class[PARAMETRIC_MAP_STORAGE], summary, seconds)


def map_voxels(path: Path, mapped: int = 6, seed: int = 17) -> list[tuple[int, int, int]]:
    """(frame, row, column) voxels of the parametric map ``path`` to read back from a viewer:
    ``mapped`` random mapped voxels, the smallest and the largest mapped value, and two voxels
    that hold the Float Pixel Padding Value (not mapped), when the map has any."""
    import numpy as np
    import pydicom

    dataset = pydicom.dcmread(path)
    values = dataset.pixel_array.reshape(-1, dataset.Rows, dataset.Columns)
    padding = dataset.get("FloatPixelPaddingValue")
    is_padding = (values == padding) if padding is not None else np.zeros(values.shape, bool)
    rng = np.random.default_rng(seed)
    inside = np.argwhere(~is_padding)
    picked = [tuple(v) for v in inside[rng.choice(len(inside), min(mapped, len(inside)),
                                                  replace=False)]]
    flat = np.where(is_padding, np.nan, values)
    picked += [np.unravel_index(np.nanargmin(flat), values.shape),
               np.unravel_index(np.nanargmax(flat), values.shape)]
    outside = np.argwhere(is_padding)
    if len(outside):
        picked += [tuple(outside[0]), tuple(outside[rng.integers(len(outside))])]
    return [(int(f), int(r), int(c)) for f, r, c in picked]


def map_voxel_world(path: Path, voxels: list[tuple[int, int, int]]) -> list[list[float]]:
    """Patient coordinates (mm) of the centres of ``voxels`` (frame, row, column) of the map
    ``path``: each frame's Image Position (Patient) plus the shared orientation and pixel
    spacing (PS3.3 C.7.6.2.1.1)."""
    import numpy as np
    import pydicom

    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    shared = dataset.SharedFunctionalGroupsSequence[0]
    orientation = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, float)
    spacing = [float(s) for s in shared.PixelMeasuresSequence[0].PixelSpacing]
    points = []
    for frame, row, column in voxels:
        group = dataset.PerFrameFunctionalGroupsSequence[frame]
        origin = np.array(group.PlanePositionSequence[0].ImagePositionPatient, float)
        point = (origin + orientation[:3] * column * spacing[1]
                 + orientation[3:] * row * spacing[0])
        points.append([float(x) for x in point])
    return points


def summary_pixels(path: Path, count: int = 64, seed: int = 17) -> list[tuple[int, int]]:
    """(row, column) pixels of the summary image to read back: ``count`` at random."""
    import numpy as np
    import pydicom

    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    rng = np.random.default_rng(seed)
    return [(int(r), int(c)) for r, c in zip(rng.integers(dataset.Rows, size=count),
                                             rng.integers(dataset.Columns, size=count),
                                             strict=True)]


def _series(path: Path) -> tuple[str, str, str]:
    import pydicom

    dataset = pydicom.dcmread(path, stop_before_pixels=True)
    return dataset.StudyInstanceUID, dataset.SeriesInstanceUID, dataset.SOPInstanceUID


def view_demo_outputs(outputs: DemoOutputs, workdir: Path, shots: Path,
                      timeout_s: float = 90.0) -> dict[str, Any]:
    """Store every file of ``outputs`` in a fresh Orthanc with DICOMweb, open the study in
    OHIF through :func:`ohif_server` in headless Chromium, and run :func:`view_study`; then, on
    a second page with its own cache, :func:`time_report_open`. Returns the observations of
    :func:`view_study`, plus ``timings["sr from navigation"]`` (the second page),
    ``timings["upload"]``, ``nudged`` (screenshots that needed a scroll before OHIF painted),
    ``console`` (every console message and page error of both pages, as dicts), ``map_voxels``
    (series UID: the voxels whose values were read), ``summary_pixels``, ``objects`` and
    ``proxied`` (DICOMweb requests of both pages: count, bytes, the failed ones, the five
    largest). Everything it started is stopped when it returns."""
    study_uid, report_series, _ = _series(outputs.report)
    voxels = {_series(p)[1]: map_voxels(p) for p in outputs.maps}
    objects = StudyObjects(
        study_uid=study_uid, report_series=report_series, seg_series=_series(outputs.seg)[1],
        map_series=tuple(_series(p)[1] for p in outputs.maps),
        summary_series=_series(outputs.summary)[1], summary_sop=_series(outputs.summary)[2],
        map_points={_series(p)[1]: map_voxel_world(p, voxels[_series(p)[1]])
                    for p in outputs.maps},
        summary_pixels=summary_pixels(outputs.summary))
    port = free_port()
    with dicomweb_orthanc(workdir / "orthanc", host=f"127.0.0.1:{port}") as server:
        started = time.monotonic()
        upload(server, outputs.files())
        upload_s = time.monotonic() - started
        with ohif_server(server.url, port=port) as site, chromium() as browser:
            url = f"{site.url}/viewer?StudyInstanceUIDs={study_uid}"
            started = time.monotonic()
            with open_viewer(browser, url) as viewer:
                observed = view_study(viewer, objects, shots, started, timeout_s=timeout_s)
                observed["nudged"] = viewer.nudged
                console = [vars(e) for e in viewer.console]
            # the reading report's open time on a fresh page: navigation, double-click as
            # soon as its thumbnail is there, every outlined measurement placed
            started = time.monotonic()
            with open_viewer(browser, url) as viewer:
                try:
                    observed["timings"]["sr from navigation"] = time_report_open(
                        viewer, objects.report_series, started, timeout_s)
                except Exception as error:  # recorded: the test reports it
                    observed["failures"]["sr from navigation"] = f"{type(error).__name__}: {error}"
                console += [vars(e) for e in viewer.console]
            observed["console"] = console
            observed["proxied"] = {"requests": len(site.proxied),
                                   "bytes": sum(n for _, _, n in site.proxied),
                                   "failed": [p for p in site.proxied if p[1] >= 400],
                                   "largest": sorted(site.proxied, key=lambda p: -p[2])[:5]}
    observed["timings"]["upload"] = upload_s
    observed["map_voxels"] = {s: [list(v) for v in vs] for s, vs in voxels.items()}
    observed["summary_pixels"] = [list(p) for p in objects.summary_pixels]
    observed["objects"] = vars(objects) | {"map_series": list(objects.map_series)}
    return observed
