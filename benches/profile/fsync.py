"""What an fsync costs after an append that grows a file, against one into zeros written ahead.

usage: python3 benches/profile/fsync.py [DIR] [WRITES] [ROUNDS]
Defaults: $TMPDIR or /var/tmp (it must be a real disk, not a tmpfs), 3000 writes, 3 rounds.

Each round writes WRITES records of 150 bytes, one after the other, each followed by
fdatasync, as single-record acks=all produces do: once appending to an empty file (every
write grows it), once into a file of zeros written and synced beforehand (no write grows
it). It prints the mean time per write + fdatasync and the system CPU per write. On ext4 the
growing file's fdatasync must also commit the new length to the journal; that is why
src/log/segment.rs writes zeros ahead of small appends.
"""

import os
import sys
import tempfile
import time

RECORD = b"x" * 150


def run(directory, writes, zeros_ahead):
    with tempfile.NamedTemporaryFile(dir=directory) as f:
        fd = f.fileno()
        if zeros_ahead:
            os.write(fd, b"\0" * (writes * len(RECORD) + 4096))
            os.fsync(fd)
        start, cpu = time.perf_counter(), os.times()
        for i in range(writes):
            os.pwrite(fd, RECORD, i * len(RECORD))
            os.fdatasync(fd)
        wall = time.perf_counter() - start
        system = os.times().system - cpu.system
    return wall / writes * 1e6, system / writes * 1e6


def main():
    directory = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TMPDIR", "/var/tmp")
    writes = int(sys.argv[2]) if len(sys.argv) > 2 else 3000
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    for _ in range(rounds):
        for zeros_ahead in (False, True):
            wall, system = run(directory, writes, zeros_ahead)
            what = "into zeros written ahead" if zeros_ahead else "growing the file       "
            print(f"{what}: {wall:7.1f} us per write + fdatasync, {system:5.1f} us system CPU")


if __name__ == "__main__":
    main()
