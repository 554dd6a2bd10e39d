#!/usr/bin/env bash
# Set up radiomics-node in ./.venv (Python >= 3.11). With --system-tools, also install the Debian
# packages the integration tests use as real peers: orthanc (PACS), dcmtk (storescu, findscu,
# dsr2xml) and dicom3tools (dciodvfy), chromium (headless screenshots of the status page and of
# the results in Orthanc's Web Viewer; about 20 s to install from a Debian mirror),
# orthanc-webviewer (that viewer, for tests/integration/test_screenshots.py), orthanc-dicomweb
# (the DICOMweb API that OHIF reads), pixelmed-apps (PixelMed's DICOM and SR validators, with a
# Java runtime), a JDK (javac, for the tests' PixelMed runs) and libgl1 (for OpenCV in the
# tests); then OHIF Viewer's prebuilt bundle from npm's registry (@ohif/app, pinned by version
# and sha512) into var/ohif. Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--system-tools" ]]; then
    missing=()
    command -v Orthanc >/dev/null 2>&1 || [[ -x /usr/sbin/Orthanc ]] || missing+=(orthanc)
    command -v storescu >/dev/null 2>&1 || missing+=(dcmtk)
    command -v dciodvfy >/dev/null 2>&1 || missing+=(dicom3tools)
    command -v chromium >/dev/null 2>&1 || missing+=(chromium)
    [[ -f /usr/share/orthanc/plugins/libOrthancWebViewer.so ]] || missing+=(orthanc-webviewer)
    [[ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]] || missing+=(orthanc-dicomweb)
    [[ -f /usr/share/java/pixelmed.jar ]] || missing+=(pixelmed-apps)
    # javac compiles the XSLT factory with which the tests run PixelMed's SR validator
    # (tests/integration/readers.py); pixelmed-apps brings only a Java runtime
    command -v javac >/dev/null 2>&1 || missing+=(default-jdk-headless)
    # OpenCV (rt-utils, the independent RTSTRUCT rasteriser of the tests) loads libGL.so.1
    ldconfig -p | grep -q "libGL.so.1 " || missing+=(libgl1)
    if ((${#missing[@]})); then
        sudo=""
        [[ $(id -u) -eq 0 ]] || sudo="sudo"
        echo "installing Debian packages: ${missing[*]}"
        $sudo apt-get update -q
        # policy-rc.d-free containers would start Orthanc's own service: tests start their own.
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
    fi
    bash scripts/ohif.sh
fi

python=${PYTHON:-python3}
if [[ ! -x .venv/bin/python ]]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[test]"
