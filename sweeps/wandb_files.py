"""Reading back what W&B wrote: its run files (`run-ID.wandb` in `wandb/offline-run-DATE-ID/`, or
`run-DATE-ID/` online), so a resumed trial continues from the last step W&B really wrote, not from
what this code asked it to log (W&B writes from a process of its own, which a kill can cut short).

wandb no longer ships a Python reader of these files. The format is LevelDB's log: a 7-byte file
header (':W&B', magic, version), then 32 KiB blocks of chunks, each with a 7-byte header (CRC,
length, type FULL=1 / FIRST=2 / MIDDLE=3 / LAST=4); a block's tail too short for a header is
padding. A record is one protobuf `Record` (wandb.proto.wandb_internal_pb2).
"""
import struct
from pathlib import Path

BLOCK, HEADER = 32768, 7


def records(path):
    """The protobuf records of a run file, in order; a record cut short by a killed writer ends it."""
    from google.protobuf.message import DecodeError
    from wandb.proto import wandb_internal_pb2 as pb
    data, pos, buf = Path(path).read_bytes(), HEADER, b""
    if data[:4] != b":W&B":
        return
    while pos + HEADER <= len(data):
        if BLOCK - pos % BLOCK < HEADER:
            pos += BLOCK - pos % BLOCK
            continue
        _, n, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 or pos + HEADER + n > len(data):  # zeros past the end, or a chunk cut short
            return
        buf, pos = buf + data[pos + HEADER:pos + HEADER + n], pos + HEADER + n
        if kind in (1, 4):
            record = pb.Record()
            try:
                record.ParseFromString(buf)
            except DecodeError:
                return
            buf = b""
            yield record


def run_files(folder, run_id):
    """Every run file of `run_id` under W&B's `dir` (one per process that ran it), oldest first."""
    return sorted(Path(folder).glob(f"wandb/*run-*-{run_id}/run-{run_id}.wandb"))


def last_step(folder, run_id) -> int:
    """The last history step W&B wrote for `run_id` in any of its run files (0: none)."""
    return max((r.history.step.num for f in run_files(folder, run_id) for r in records(f)
                if r.WhichOneof("record_type") == "history"), default=0)
