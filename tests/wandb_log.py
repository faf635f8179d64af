"""Reads what W&B wrote into an offline run's transaction log (``run-*.wandb``).

The file is W&B's LevelDB-style log: a 7-byte header (``:W&B``, magic,
version), then 32 KiB blocks of records, each ``crc32 (4) | length (2) |
type (1) | data``, where type 1 is a whole record and 2/3/4 the first, middle
and last pieces of a split one. Each record is a ``wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

_BLOCK = 32768


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log"
    out, pos, pending = [], 7, b""
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:
            whole = chunk
        elif kind == 2:
            pending = chunk
            continue
        elif kind == 3:
            pending += chunk
            continue
        elif kind == 4:
            whole = pending + chunk
        else:
            continue
        record = pb.Record()
        record.ParseFromString(whole)
        out.append(record)
    return out


def read_run(run_dir: Path) -> dict[str, Any]:
    """The run record (id, group, tags, config), history rows and final summary."""
    (log_file,) = Path(run_dir).glob("wandb/*run-*/run-*.wandb")
    info: dict[str, Any] = {"history": [], "summary": {}}
    for r in records(log_file):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            info.update(id=r.run.run_id, group=r.run.run_group, tags=list(r.run.tags),
                        config={i.key: json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "history":
            info["history"].append({"/".join(i.nested_key) or i.key: json.loads(i.value_json)
                                    for i in r.history.item})
        elif kind == "summary":
            for i in r.summary.update:
                info["summary"]["/".join(i.nested_key) or i.key] = json.loads(i.value_json)
    return info
