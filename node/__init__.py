"""The radiomics-node service: network, state, time and routing. It moves files and states only."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("radiomics-node")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.1.0"
