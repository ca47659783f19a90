from __future__ import annotations

import json

import pytest

from streamproc.avro_codec import SINGLE_OBJECT_MAGIC, load_schemas, schema_fingerprint
from streamproc.errors import SchemaError
from streamproc.settings import Settings

SCHEMAS = load_schemas(Settings().schemas_dir)
CODEC = SCHEMAS.codec("ChunkRequested")
EVENT = {"event_id": "e-1", "tenant": "acme", "doc_id": "handbook", "content": "# Title\n\nBody."}


def test_fingerprint_matches_the_avro_spec_vector() -> None:
    # Avro's published CRC-64-AVRO vectors (share/test/data/schema-tests.txt), read as the
    # little-endian signed 64-bit integers the single-object header carries.
    assert int.from_bytes(schema_fingerprint("int"), "little", signed=True) == 8247732601305521295
    assert int.from_bytes(schema_fingerprint("null"), "little", signed=True) == 7195948357588979594


def test_single_object_round_trip_fills_defaults() -> None:
    data = CODEC.encode(
        {
            **EVENT,
            "op": "UPSERT",
            "content_uri": None,
            "content_type": "text/markdown",
            "content_sha256": None,
            "metadata": {"lang": "en"},
            "ingested_at": None,
        }
    )
    assert data[:2] == SINGLE_OBJECT_MAGIC
    assert data[2:10] == CODEC.fingerprint
    decoded = CODEC.decode(data)
    assert decoded["doc_id"] == "handbook"
    assert decoded["metadata"] == {"lang": "en"}


def test_json_and_binary_decode_to_the_same_record() -> None:
    from_json = CODEC.decode_json(json.dumps(EVENT))
    assert from_json["op"] == "UPSERT"
    assert from_json["content_type"] == "text/plain"
    assert CODEC.decode(CODEC.encode(from_json)) == from_json
    assert CODEC.decode_any(json.dumps(EVENT).encode()) == from_json


@pytest.mark.parametrize(
    ("payload", "field", "words"),
    [
        ({"event_id": "e", "doc_id": "d"}, "tenant", "required field is missing"),
        ({**EVENT, "tenant": 7}, "tenant", "expected string, got int"),
        ({**EVENT, "op": "MERGE"}, "op", "UPSERT"),
        ({**EVENT, "colour": "red"}, "colour", "unknown field"),
    ],
)
def test_bad_json_names_schema_and_field(
    payload: dict[str, object], field: str, words: str
) -> None:
    with pytest.raises(SchemaError) as info:
        CODEC.decode_json(json.dumps(payload))
    assert info.value.field == field
    assert str(info.value).startswith("ChunkRequested field")
    assert words in str(info.value)


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"\x00\x01garbage", "neither Avro single-object encoding nor a JSON object"),
        (b"{not json", "invalid JSON"),
        (b'{"a": "\xff"}', "not valid UTF-8"),
        (SINGLE_OBJECT_MAGIC + b"\x00" * 8 + b"\x02", "fingerprint"),
        (SINGLE_OBJECT_MAGIC + CODEC.fingerprint + b"\x02\xff", "not valid UTF-8"),
        (SINGLE_OBJECT_MAGIC + CODEC.fingerprint + b"\x08ab", "corrupt Avro datum"),
    ],
)
def test_undecodable_bytes_give_clear_errors(data: bytes, words: str) -> None:
    with pytest.raises(SchemaError) as info:
        CODEC.decode_any(data)
    assert "ChunkRequested" in str(info.value)
    assert words in str(info.value)


def test_validation_errors_never_echo_the_value() -> None:
    secret = "TOP-SECRET-PAYLOAD"
    with pytest.raises(SchemaError) as info:
        CODEC.encode({**EVENT, "content": {"nested": secret}})
    assert secret not in str(info.value)


def test_every_schema_is_known_by_fingerprint() -> None:
    for name in ("ChunkRequested", "ChunkRecord", "EmbedRequested", "EmbedDone", "BackfillJob"):
        codec = SCHEMAS.codec(name)
        assert SCHEMAS.by_fingerprint(codec.fingerprint) is codec
