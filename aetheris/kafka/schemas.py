"""The Avro contract: load ``avro_schemas/*.avsc``, resolve cross-file references, fingerprint.

Each ``.avsc`` file defines named types in the ``dev.aetheris.v1`` namespace and may refer to
types defined in other files by name. Every named type is expanded into a *self-contained*
schema (a referenced type is inlined at its first use and referred to by full name afterwards,
as Avro requires), so it can be parsed on its own, sent to a Schema Registry, or fingerprinted.

The identity of a schema on the wire is the CRC-64-AVRO fingerprint of its Parsing Canonical
Form, the same value Java's ``SchemaNormalization.parsingFingerprint64`` computes. A
:class:`SchemaCatalog` holds the *current* schema of every type (the reader schemas) and every
*writer* schema it has been told about, keyed by fingerprint, so that bytes written with an
older (or newer) version of a type can be resolved against the current one. Earlier versions
ship in ``avro_schemas/history/`` and are known writers from the start.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

from aetheris.errors import SerdeError, UnknownSchemaError

NAMESPACE = "dev.aetheris.v1"
SINGLE_OBJECT_MAGIC = b"\xc3\x01"
HISTORY_DIRECTORY = "history"

_PRIMITIVES = frozenset(
    {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
)
_NAMED = frozenset({"record", "error", "enum", "fixed"})


@dataclass(frozen=True)
class AvroSchema:
    """One self-contained schema and its wire identity."""

    fullname: str
    definition: Mapping[str, Any] = field(repr=False)
    parsed: Any = field(repr=False, compare=False)
    canonical: str = field(repr=False)
    fingerprint: bytes = field(repr=False)

    @property
    def fingerprint_hex(self) -> str:
        """The 8 fingerprint bytes in wire (little-endian) order, as hex."""
        return self.fingerprint.hex()

    @property
    def single_object_header(self) -> bytes:
        """The 10-byte prefix of Avro single-object encoding for this schema."""
        return SINGLE_OBJECT_MAGIC + self.fingerprint

    def to_json(self) -> str:
        """The schema as JSON text (what is registered with a Schema Registry)."""
        return json.dumps(self.definition, separators=(",", ":"))


def make_schema(definition: Mapping[str, Any] | str) -> AvroSchema:
    """Parse one self-contained schema (JSON text or already-decoded JSON) and fingerprint it."""
    try:
        document = json.loads(definition) if isinstance(definition, str) else dict(definition)
        # A fresh name table per schema: named types must not leak between versions of a type.
        parsed = parse_schema(document, named_schemas={})
        canonical = to_parsing_canonical_form(parsed)
    except SerdeError:
        raise
    except Exception as exc:  # fastavro reports bad schemas with many exception types
        raise SerdeError(f"invalid Avro schema: {type(exc).__name__}: {exc}") from exc
    if not isinstance(parsed, dict) or "name" not in parsed:
        raise SerdeError("a top-level schema must be a named type (record, enum or fixed)")
    return AvroSchema(
        fullname=str(parsed["name"]),
        definition=document,
        parsed=parsed,
        canonical=canonical,
        fingerprint=bytes.fromhex(fingerprint(canonical, "CRC-64-AVRO")),
    )


def schema_directory() -> Traversable:
    """Where the ``.avsc`` files are: inside the installed wheel, else the source checkout."""
    packaged = resources.files("aetheris") / "_avro_schemas"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "avro_schemas"


def _fullname(name: str, namespace: str | None) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _namespace_of(fullname: str) -> str | None:
    return fullname.rpartition(".")[0] or None


def _walk(node: Any, namespace: str | None) -> Iterator[tuple[str, str, Any]]:
    """Yield ("def", fullname, node) for each named definition and ("ref", fullname, None)."""
    if isinstance(node, str):
        if node not in _PRIMITIVES:
            yield "ref", _fullname(node, namespace), None
    elif isinstance(node, list):
        for branch in node:
            yield from _walk(branch, namespace)
    elif isinstance(node, dict):
        kind = node.get("type")
        if isinstance(kind, str) and kind in _NAMED:
            full = _fullname(str(node["name"]), node.get("namespace", namespace))
            yield "def", full, node
            for fld in node.get("fields", ()):
                yield from _walk(fld["type"], _namespace_of(full))
        elif kind == "array":
            yield from _walk(node["items"], namespace)
        elif kind == "map":
            yield from _walk(node["values"], namespace)
        else:
            yield from _walk(kind, namespace)
    else:
        raise SerdeError(f"not an Avro schema node: {node!r}")


def _expand(node: Any, namespace: str | None, defs: Mapping[str, Any], seen: set[str]) -> Any:
    """Inline referenced types at first use; later uses stay references by full name."""
    if isinstance(node, str):
        if node in _PRIMITIVES:
            return node
        full = _fullname(node, namespace)
        if full in seen:
            return full
        if full not in defs:
            raise SerdeError(f"unknown Avro type {full!r}")
        return _expand(defs[full], _namespace_of(full), defs, seen)
    if isinstance(node, list):
        return [_expand(branch, namespace, defs, seen) for branch in node]
    kind = node.get("type")
    if isinstance(kind, str) and kind in _NAMED:
        return _expand_named(node, namespace, defs, seen)
    nested = {"array": "items", "map": "values"}.get(kind, "type") if isinstance(kind, str) else "type"
    return {**node, nested: _expand(node[nested], namespace, defs, seen)}


def _expand_named(
    node: Mapping[str, Any], namespace: str | None, defs: Mapping[str, Any], seen: set[str]
) -> Any:
    full = _fullname(str(node["name"]), node.get("namespace", namespace))
    if full in seen:
        return full
    seen.add(full)
    # Full names everywhere make the expansion independent of namespace inheritance.
    out = {k: v for k, v in node.items() if k != "namespace"}
    out["name"] = full
    if "fields" in node:
        inner = _namespace_of(full)
        out["fields"] = [
            {**fld, "type": _expand(fld["type"], inner, defs, seen)} for fld in node["fields"]
        ]
    return out


def _definitions(documents: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Every named type across ``documents`` (keyed by source name) and where it is defined."""
    defs: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for source, document in documents.items():
        for kind, full, node in _walk(document, None):
            if kind != "def":
                continue
            if full in defs:
                raise SerdeError(f"Avro type {full} is defined twice ({origin[full]}, {source})")
            defs[full], origin[full] = node, source
    return defs, origin


def dependency_order(documents: Mapping[str, Any]) -> list[str]:
    """Source names ordered so each document comes after those defining the types it uses.

    This is the order a sequential parser (Java's ``Schema.Parser``) needs.
    """
    _, origin = _definitions(documents)
    deps: dict[str, set[str]] = {}
    for source, document in documents.items():
        needed = set()
        for kind, full, _node in _walk(document, None):
            if kind == "ref":
                if full not in origin:
                    raise SerdeError(f"{source} references unknown Avro type {full}")
                needed.add(origin[full])
        deps[source] = needed - {source}
    ordered: list[str] = []
    state: dict[str, str] = {}

    def visit(source: str, path: tuple[str, ...]) -> None:
        if state.get(source) == "done":
            return
        if state.get(source) == "active":
            raise SerdeError(f"cyclic references between schema files: {' -> '.join(path)}")
        state[source] = "active"
        for dep in sorted(deps[source]):
            visit(dep, (*path, dep))
        state[source] = "done"
        ordered.append(source)

    for source in sorted(documents):
        visit(source, (source,))
    return ordered


def _avsc_documents(directory: Traversable) -> dict[str, Any]:
    documents: dict[str, Any] = {}
    for entry in sorted(directory.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".avsc"):
            try:
                documents[entry.name] = json.loads(entry.read_text(encoding="utf-8"))
            except json.JSONDecodeError as exc:
                raise SerdeError(f"{entry.name} is not valid JSON: {exc}") from exc
    return documents


def load_documents(directory: Traversable | None = None) -> dict[str, Any]:
    """The decoded ``.avsc`` files of ``directory`` (default: :func:`schema_directory`)."""
    directory = directory if directory is not None else schema_directory()
    documents = _avsc_documents(directory)
    if not documents:
        raise SerdeError(f"no .avsc files in {directory}")
    return documents


def load_history(directory: Traversable | None = None) -> dict[str, Any]:
    """Earlier versions of the types: self-contained schemas in ``history/*.avsc`` (may be none).

    Without a Schema Registry a single-object record names its writer schema only by
    fingerprint, so every version ever written must ship with the reader.
    """
    history = (directory if directory is not None else schema_directory()) / HISTORY_DIRECTORY
    return _avsc_documents(history) if history.is_dir() else {}


def ordered_schema_files(directory: Traversable | None = None) -> list[Traversable]:
    """The ``.avsc`` files in dependency order (dependencies first)."""
    directory = directory if directory is not None else schema_directory()
    return [directory / name for name in dependency_order(load_documents(directory))]


class SchemaCatalog:
    """Current (reader) schemas by name and known writer schemas by fingerprint."""

    def __init__(self, documents: Mapping[str, Any] | Iterable[Any]) -> None:
        """Resolve ``documents`` (``{source: schema JSON}`` or an iterable of schema JSON)."""
        if not isinstance(documents, Mapping):
            documents = {f"document {i}": doc for i, doc in enumerate(documents)}
        dependency_order(documents)  # fail early, naming the file, on dangling references
        defs, _ = _definitions(documents)
        self._current: dict[str, AvroSchema] = {}
        self._writers: dict[bytes, AvroSchema] = {}
        for full in sorted(defs):
            schema = make_schema(_expand(full, None, defs, set()))
            self._current[full] = schema
            self._writers[schema.fingerprint] = schema

    @classmethod
    def from_directory(cls, directory: Traversable | None = None) -> SchemaCatalog:
        """A catalog of the ``.avsc`` files in ``directory`` (default: the shipped contract).

        The earlier versions in its ``history/`` become known writer schemas.
        """
        catalog = cls(load_documents(directory))
        for source, document in load_history(directory).items():
            if catalog.register_writer(document).fullname not in catalog._current:
                raise SerdeError(f"{HISTORY_DIRECTORY}/{source} is a version of no current type")
        return catalog

    @property
    def names(self) -> list[str]:
        """Full names of every current type."""
        return list(self._current)

    def current(self, name: str) -> AvroSchema:
        """The current schema of ``name`` (a full name, or a name in :data:`NAMESPACE`)."""
        schema = self._current.get(_fullname(name, NAMESPACE))
        if schema is None:
            raise UnknownSchemaError(f"no Avro schema named {name!r} in the catalog")
        return schema

    def writer(self, fingerprint: bytes) -> AvroSchema | None:
        """The writer schema with this fingerprint (8 bytes, wire order), if known."""
        return self._writers.get(fingerprint)

    def register_writer(self, definition: Mapping[str, Any] | str) -> AvroSchema:
        """Make a self-contained schema (e.g. an older version of a type) known as a writer."""
        schema = make_schema(definition)
        self._writers.setdefault(schema.fingerprint, schema)
        return self._writers[schema.fingerprint]

    def writers(self) -> list[AvroSchema]:
        """Every known writer schema."""
        return list(self._writers.values())


@cache
def default_catalog() -> SchemaCatalog:
    """The shipped contract, loaded once per process."""
    return SchemaCatalog.from_directory()
