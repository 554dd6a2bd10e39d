"""DICOM readers written by others, run on the node's output objects: dcmqi's ``tid1500reader``,
``segimage2itkimage`` and ``paramap2itkimage`` (PyPI ``dcmqi``, the test extra), PixelMed's
``DicomSRValidator`` and ``DicomInstanceValidator`` (Debian ``pixelmed-apps``) and dicom3tools'
``dciodvfy`` (scripts/setup.sh --system-tools installs the last two).

Each runner returns a :class:`ToolRun` with every line the tool printed, so that an assertion
message shows them. A tool that is missing fails the test where ``CI`` is set (CI sets up with
scripts/test.sh) and skips it elsewhere (:func:`require`).

PixelMed's ``DicomSRValidator`` (Debian's 20220313) looks codes up in its context groups with
XSLT ``document('DicomContextGroupsSource.xml')``, which its URI resolver returns without a
system id: the JDK's XSLTC then parses the 664 KB file again at every lookup (three per NUM,
about twelve per Image Library entry) and keeps every copy until the validation ends, about
4 MB each. Measured on the demo (40 x 256 x 256, 2 cores): the 4 MB single report ran out of a
2 GB heap after 141 s, the 2.3 MB feature report after 288 s; the heap needed grows by about 12
MB per NUM and 52 MB per Image Library entry, so that no grouping of 8,296 NUMs fits a bounded
heap. :func:`sr_validator` runs PixelMed's own ``main`` with
``java/CachingDocumentsTransformerFactory.java`` as the XSLT factory, which gives those
sources their system id, so that XSLTC parses each document once: the feature report then
validates in 30 s with 171 MB of live heap, and PixelMed prints the same lines as without it
(a test compares them on the reading report, which fits either way)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest

PIXELMED_JAR = Path("/usr/share/java/pixelmed.jar")
"""Debian's PixelMed; its manifest's Class-Path names the jars it needs in /usr/share/java."""

JAVA_XPATH_LIMITS_LIFTED = (
    "-Djdk.xml.xpathExprGrpLimit=0",
    "-Djdk.xml.xpathExprOpLimit=0",
    "-Djdk.xml.xpathTotalOpLimit=0",
)
"""PixelMed's compiled validation stylesheets exceed the JDK's default XPath limits."""

PIXELMED_HEAP = "1g"
"""Java heap bound of a PixelMed validator run: a report it cannot validate in it fails."""

JAVA_SOURCES = Path(__file__).with_name("java")
CACHING_FACTORY = "CachingDocumentsTransformerFactory"
JAVA_XSLTC_EXPORTS = (
    "--add-exports", "java.xml/com.sun.org.apache.xalan.internal.xsltc.trax=ALL-UNNAMED",
    "--add-exports", "java.xml/com.sun.org.apache.xml.internal.utils=ALL-UNNAMED",
)
"""The JDK internals ``CachingDocumentsTransformerFactory`` extends and uses."""

PIXELMED_TIMEOUT_S = 300.0  # the feature report takes 30 s (2 cores)


def require(found: bool, message: str) -> None:
    """Fail the test under ``CI`` (where scripts/test.sh installed every tool), else skip it,
    unless ``found``."""
    if found:
        return
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def tool(name: str) -> str:
    """Path of the executable ``name``: on PATH or beside this Python (the virtual
    environment's bin, where pip puts dcmqi's console scripts)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    require(found is not None,
            f"{name} not found: scripts/setup.sh --system-tools and the test extra install it")
    assert found is not None
    return found


def java_classpath() -> tuple[str, str]:
    """(java, the PixelMed class path); fails or skips (:func:`require`) without them."""
    java = tool("java")
    require(PIXELMED_JAR.is_file(), f"{PIXELMED_JAR} not found: install Debian's pixelmed-apps")
    return java, str(PIXELMED_JAR)


@dataclass(frozen=True)
class ToolRun:
    """What one run of a tool printed (stdout, then stderr) and how it ended. ``returncode`` is
    None when it was stopped at its timeout."""

    command: tuple[str, ...]
    returncode: int | None
    lines: tuple[str, ...]

    @property
    def errors(self) -> list[str]:
        """Lines that start with "Error" (dciodvfy "Error - ...", PixelMed "Error: ...")."""
        return [line for line in self.lines if line.startswith("Error")]

    @property
    def warnings(self) -> list[str]:
        """Lines that start with "Warning"."""
        return [line for line in self.lines if line.startswith("Warning")]

    @property
    def completed(self) -> bool:
        """Exit status 0 within the timeout."""
        return self.returncode == 0

    def describe(self, limit: int = 60) -> str:
        """The command, its exit status and its lines (errors first, then the others, at most
        ``limit`` in all, with the count of the rest), for an assertion message."""
        errors = self.errors
        others = [line for line in self.lines if not line.startswith("Error")]
        shown = (errors + others)[:limit]
        rest = len(self.lines) - len(shown)
        status = "timed out" if self.returncode is None else f"exit status {self.returncode}"
        return "\n".join([f"$ {' '.join(self.command)}  ({status}, {len(errors)} errors)",
                          *shown, *([f"... {rest} more lines"] if rest > 0 else [])])


def run_tool(command: list[str], timeout: float, cwd: Path | None = None) -> ToolRun:
    """Run ``command``; a run past ``timeout`` seconds is killed and reported, not raised."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace",
                              timeout=timeout, check=False, cwd=cwd)
    except subprocess.TimeoutExpired as expired:
        out = expired.stdout or ""
        out = out.decode(errors="replace") if isinstance(out, bytes) else out
        return ToolRun(tuple(command), None,
                       (*out.splitlines(), f"(killed after {timeout:.0f} s)"))
    return ToolRun(tuple(command), done.returncode,
                   tuple((done.stdout + done.stderr).splitlines()))


def pixelmed(validator: str, path: Path, heap: str = PIXELMED_HEAP,
             timeout: float = PIXELMED_TIMEOUT_S, factory: Path | None = None) -> ToolRun:
    """PixelMed's ``com.pixelmed.validate.<validator>`` (``DicomSRValidator`` or
    ``DicomInstanceValidator``) on ``path`` with the heap bounded to ``heap``, through the
    XSLT factory compiled into ``factory`` (:func:`caching_factory`) when given. A Java
    OutOfMemoryError ends it with a non-zero exit status and its message among the lines."""
    java, classpath = java_classpath()
    options: list[str] = []
    if factory is not None:
        classpath = f"{classpath}:{factory}"
        options = [*JAVA_XSLTC_EXPORTS,
                   f"-Djavax.xml.transform.TransformerFactory={CACHING_FACTORY}"]
    return run_tool([java, *options, *JAVA_XPATH_LIMITS_LIFTED, f"-Xmx{heap}", "-cp", classpath,
                     f"com.pixelmed.validate.{validator}", str(path)], timeout)


def caching_factory(directory: Path) -> Path:
    """Compile ``java/CachingDocumentsTransformerFactory.java`` into ``directory`` with the
    JDK's ``javac`` (scripts/setup.sh --system-tools installs it) and return ``directory``."""
    run = run_tool([tool("javac"), *JAVA_XSLTC_EXPORTS, "-nowarn", "-d", str(directory),
                    str(JAVA_SOURCES / f"{CACHING_FACTORY}.java")], timeout=120)
    assert run.completed and (directory / f"{CACHING_FACTORY}.class").is_file(), run.describe()
    return directory


def sr_validator(path: Path, factory: Path, heap: str = PIXELMED_HEAP,
                 timeout: float = PIXELMED_TIMEOUT_S) -> ToolRun:
    """PixelMed's ``DicomSRValidator`` on the SR ``path``, each document parsed once (the
    module's docstring): :func:`pixelmed` with the factory compiled into ``factory``."""
    return pixelmed("DicomSRValidator", path, heap, timeout, factory)


def pixelmed_iods() -> dict[str, str]:
    """SOP Class UID -> IOD name of every IOD that PixelMed's ``DicomInstanceValidator`` checks,
    read from its compiled stylesheet in the jar (``Found <name> IOD`` after the SOP Class
    test); for another SOP class it prints "IOD (SOP Class) unrecognized"."""
    java_classpath()
    with zipfile.ZipFile(PIXELMED_JAR) as jar:
        text = jar.read("com/pixelmed/validate/DicomIODDescriptionsCompiled.xsl").decode()
    found = re.findall(r"/DicomObject/SOPClassUID/value = '([0-9.]+)'\">\s*"
                       r"<xsl:text>Found (\w+) IOD</xsl:text>", text)
    return dict(found)


def tid1500reader(path: Path, directory: Path, timeout: float = 300.0) -> tuple[ToolRun, dict]:
    """dcmqi's ``tid1500reader`` on the SR ``path``: its run and the JSON it wrote into
    ``directory`` (empty when it wrote none)."""
    output = directory / f"{path.stem}.json"
    run = run_tool([tool("tid1500reader"), "--inputDICOM", str(path),
                    "--outputMetadata", str(output)], timeout)
    return run, (json.loads(output.read_text()) if output.is_file() else {})


def segimage2itkimage(path: Path, directory: Path, timeout: float = 300.0) -> ToolRun:
    """dcmqi's ``segimage2itkimage``: one NRRD per segment (``<n>.nrrd``, n its segment
    number) and ``meta.json`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    return run_tool([tool("segimage2itkimage"), "--inputDICOM", str(path),
                     "--outputDirectory", str(directory), "--outputType", "nrrd"], timeout)


def paramap2itkimage(path: Path, directory: Path, timeout: float = 300.0) -> ToolRun:
    """dcmqi's ``paramap2itkimage``: ``pmap.nrrd`` and ``meta.json`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    return run_tool([tool("paramap2itkimage"), "--inputDICOM", str(path),
                     "--outputDirectory", str(directory)], timeout)
