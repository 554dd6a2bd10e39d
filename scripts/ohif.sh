#!/usr/bin/env bash
# Install OHIF Viewer's prebuilt bundle (npm package @ohif/app, its dist/ folder) into
# var/ohif/<version>/dist for tests/integration/test_ohif.py: the tarball from npm's registry,
# checked against the registry's sha512 integrity pinned here. Safe to run again: it installs
# only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION=3.13.2
INTEGRITY=sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA==
URL="https://registry.npmjs.org/@ohif/app/-/app-${VERSION}.tgz"
target="var/ohif/${VERSION}"

[[ -f "$target/dist/index.html" ]] && exit 0
mkdir -p "$target"
tarball="$target/app-${VERSION}.tgz"
echo "downloading OHIF Viewer ${VERSION} (@ohif/app, about 50 MB)"
python3 - "$URL" "$tarball" "$INTEGRITY" <<'PY'
import base64, hashlib, sys, urllib.request
url, path, integrity = sys.argv[1:]
with urllib.request.urlopen(url, timeout=300) as response, open(path, "wb") as out:
    digest = hashlib.sha512()
    while chunk := response.read(1 << 20):
        digest.update(chunk)
        out.write(chunk)
got = "sha512-" + base64.b64encode(digest.digest()).decode()
if got != integrity:
    sys.exit(f"{url}: sha512 {got}, pinned {integrity}")
PY
rm -rf "$target/package"
tar -xzf "$tarball" -C "$target" package/dist
mv "$target/package/dist" "$target/dist"
rm -rf "$target/package" "$tarball"
