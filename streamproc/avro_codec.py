"""Avro codec: single-object encoding by default, and JSON that matches the schema.

Single-object encoding (Avro spec): 0xC3 0x01, the schema's CRC-64-AVRO fingerprint as 8
little-endian bytes, then the binary datum. Any consumer holding the schema can tell which
schema wrote the bytes without a registry.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint, to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

from streamproc.errors import SchemaError

SINGLE_OBJECT_MAGIC = b"\xc3\x01"
_HEADER_LEN = 10

# Files in dependency order: later schemas refer to names defined by earlier ones.
SCHEMA_FILES: dict[str, str] = {
    "ChunkRecord": "chunk_record.avsc",
    "ChunkRequested": "chunk_requested.avsc",
    "EmbedRequested": "embed_requested.avsc",
    "EmbedDone": "embed_done.avsc",
    "BackfillJob": "backfill_job.avsc",
    "BackfillCommand": "backfill_command.avsc",
    "AliasChange": "alias_change.avsc",
}


@dataclass(frozen=True)
class AvroCodec:
    name: str
    schema: dict[str, Any]
    fingerprint: bytes

    def encode(self, record: Mapping[str, Any]) -> bytes:
        self._validate(record)
        buf = io.BytesIO()
        buf.write(SINGLE_OBJECT_MAGIC)
        buf.write(self.fingerprint)
        schemaless_writer(buf, self.schema, dict(record))
        return buf.getvalue()

    def decode(self, data: bytes) -> dict[str, Any]:
        """Decode single-object bytes; raises SchemaError for anything else."""
        if len(data) < _HEADER_LEN or data[:2] != SINGLE_OBJECT_MAGIC:
            raise SchemaError(
                self.name,
                f"not Avro single-object encoding (starts with {data[:2].hex() or 'nothing'})",
            )
        if data[2:_HEADER_LEN] != self.fingerprint:
            raise SchemaError(
                self.name,
                f"written with schema fingerprint {data[2:_HEADER_LEN].hex()}, "
                f"expected {self.fingerprint.hex()}",
            )
        try:
            record = schemaless_reader(io.BytesIO(data[_HEADER_LEN:]), self.schema, None)
        except UnicodeDecodeError as exc:
            raise SchemaError(self.name, f"string is not valid UTF-8 ({exc.reason})") from exc
        except (EOFError, ValueError, IndexError, TypeError) as exc:
            raise SchemaError(
                self.name, f"corrupt Avro datum ({type(exc).__name__}: {exc})"
            ) from exc
        if not isinstance(record, dict):
            raise SchemaError(self.name, "datum is not a record")
        return record

    def decode_json(self, data: bytes | str) -> dict[str, Any]:
        """Decode plain JSON whose fields follow the schema; missing fields take their defaults."""
        try:
            text = data.decode("utf-8") if isinstance(data, bytes) else data
            obj = json.loads(text)
        except UnicodeDecodeError as exc:
            raise SchemaError(self.name, f"JSON is not valid UTF-8 ({exc.reason})") from exc
        except json.JSONDecodeError as exc:
            raise SchemaError(self.name, f"invalid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise SchemaError(self.name, f"JSON must be an object, got {type(obj).__name__}")
        known = {f["name"] for f in self.schema["fields"]}
        unknown = sorted(set(obj) - known)
        if unknown:
            raise SchemaError(self.name, "unknown field", field=unknown[0])
        for field in self.schema["fields"]:
            if field["name"] not in obj and "default" not in field:
                raise SchemaError(self.name, "required field is missing", field=field["name"])
        # Round-trip through the binary form so JSON and binary inputs decode to equal records.
        try:
            binary = self.encode(obj)
        except UnicodeEncodeError as exc:
            # JSON may escape a lone surrogate ("\ud800"), which no UTF-8 string can hold. The
            # error's own text quotes the string, so only the position is kept.
            raise SchemaError(
                self.name, f"a string holds a lone surrogate (character {exc.start})"
            ) from None
        return self.decode(binary)

    def decode_any(self, data: bytes) -> dict[str, Any]:
        if data[:2] == SINGLE_OBJECT_MAGIC:
            return self.decode(data)
        if data.lstrip()[:1] == b"{":
            return self.decode_json(data)
        raise SchemaError(self.name, "neither Avro single-object encoding nor a JSON object")

    def _validate(self, record: Mapping[str, Any]) -> None:
        try:
            validate(dict(record), self.schema, raise_errors=True)
        except ValidationError as exc:
            # Name the field and the types only: the datum may be document text.
            first = exc.errors[0]
            field = str(first.field).rsplit(".", 1)[-1] if first.field else None
            expected = first.schema if isinstance(first.schema, str) else json.dumps(first.schema)
            raise SchemaError(
                self.name,
                f"expected {expected}, got {type(first.datum).__name__}",
                field=field,
            ) from exc


class Schemas:
    """The project's Avro schemas, parsed once, by record name."""

    def __init__(self, schemas_dir: Path) -> None:
        self.dir = schemas_dir
        named: dict[str, Any] = {}
        self._codecs: dict[str, AvroCodec] = {}
        self._expanded: dict[str, dict[str, Any]] = {}
        for name, filename in SCHEMA_FILES.items():
            raw = json.loads((schemas_dir / filename).read_text())
            parsed = parse_schema(raw, named_schemas=named)
            expanded = parse_schema(raw, named_schemas=dict(named), expand=True)
            self._codecs[name] = AvroCodec(name, parsed, schema_fingerprint(expanded))
            self._expanded[name] = expanded

    def codec(self, name: str) -> AvroCodec:
        try:
            return self._codecs[name]
        except KeyError:
            raise KeyError(f"no schema named {name!r}; known: {sorted(self._codecs)}") from None

    def by_fingerprint(self, fingerprint: bytes) -> AvroCodec | None:
        return next((c for c in self._codecs.values() if c.fingerprint == fingerprint), None)

    def expanded(self, name: str) -> dict[str, Any]:
        """The schema with every named type inlined, as a standalone JSON schema."""
        return self._expanded[name]


def schema_fingerprint(schema: Any) -> bytes:
    """CRC-64-AVRO of the parsing canonical form, little-endian, as single-object encoding wants."""
    # fastavro spells the fingerprint as the hex of its little-endian bytes already.
    return bytes.fromhex(fingerprint(to_parsing_canonical_form(schema), "CRC-64-AVRO"))


@cache
def load_schemas(schemas_dir: Path) -> Schemas:
    return Schemas(schemas_dir)
