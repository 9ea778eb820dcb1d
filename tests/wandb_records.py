"""Read a wandb ``.wandb`` run file (offline runs) into wandb's own protobuf records.

wandb 0.31 writes runs as a LevelDB-style log (``:W&B`` header, 32 KiB blocks of CRC-checked
chunks) of ``wandb.proto.wandb_internal_pb2.Record`` messages; its Python package no longer ships
the reader (wandb-core, in Go, does the reading), so the framing is undone here and every record
is decoded by wandb's own protobuf classes. A CRC mismatch fails loudly.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = struct.Struct("<4sHB")  # ident, magic, version
CHUNK = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    ident, magic, _ = HEADER.unpack_from(data, 0)
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a wandb run file"
    out, pending, pos = [], b"", HEADER.size
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # block trailer
            pos += left
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # zero padding
            pos += left
            continue
        chunk = data[pos + CHUNK.size : pos + CHUNK.size + length]
        if len(chunk) < length:
            break  # a record still being written
        assert zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF == crc, f"bad CRC at {pos} in {path}"
        pos += CHUNK.size + length
        if kind == FULL:
            out.append(pb.Record.FromString(chunk))
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            out.append(pb.Record.FromString(pending + chunk))
            pending = b""
    return out


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class WandbRun:
    path: Path
    run_id: str = ""
    project: str = ""
    entity: str = ""
    name: str = ""
    group: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)
    exit_code: int | None = None


def read_run(path: Path) -> WandbRun:
    run = WandbRun(path)
    for r in records(path):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run.run_id, run.project, run.name = r.run.run_id, r.run.project, r.run.display_name
            run.group, run.tags, run.entity = r.run.run_group, list(r.run.tags), r.run.entity
            for item in r.run.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "config":
            for item in r.config.update:
                run.config[_key(item)] = json.loads(item.value_json)
        elif kind == "history":
            run.history.append({_key(i): json.loads(i.value_json) for i in r.history.item})
        elif kind == "exit":
            run.exit_code = r.exit.exit_code
    return run
