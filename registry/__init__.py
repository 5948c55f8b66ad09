"""brickwork: registry — the versioned, content-addressed store of bricks (see registry.registry)."""

from bricks.refs import BrickRef, Version, parse_ref, parse_version

from .catalog import TagEvent, VersionInfo
from .registry import Registry, VerifyProblem, default_registry_path
from .store import CorruptBlobError, RegistryFullError

__all__ = [
    "BrickRef",
    "CorruptBlobError",
    "Registry",
    "RegistryFullError",
    "TagEvent",
    "VerifyProblem",
    "Version",
    "VersionInfo",
    "default_registry_path",
    "parse_ref",
    "parse_version",
]
