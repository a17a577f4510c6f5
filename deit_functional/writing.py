"""Writing results: no half-written file under a final name, no file ever overwritten, and
PNGs written fast.

A result's files are first *staged*: each written whole under a temporary (hidden) name in the
output folder. Then they are *published* under their final names, all or none, by hard links,
which fail where a name exists: so two runs writing into one folder at once can never take the
same name, and a failure -- a full disk, Ctrl-C -- leaves no result file and removes its
temporary files on the way out. Only a killed process (SIGKILL) can leave temporary files
behind, or part of a result set if killed while publishing. Temporary files are created with
mode 0666 masked by the user's umask, as any new file is, so results get the usual permissions
(0644 under umask 022); tempfile.mkstemp would make them 0600.
"""
import io
import json
import os
import re
import secrets
import struct
import zlib
from pathlib import Path

import numpy as np


def stage(folder, name, save):
    """Write a new file in ``folder`` through ``save(file)``, ``file`` open for writing bytes ->
    its temporary path, named after ``name``. Nothing is left behind if ``save`` fails."""
    name = Path(name)
    while True:
        temporary = Path(folder) / f".{name.stem}.{secrets.token_hex(4)}{name.suffix}"
        try:
            descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:  # another writer drew the same name: draw again
            continue
    try:
        with open(descriptor, "wb") as file:  # written through the descriptor that created it
            save(file)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return temporary


def publish(staged, targets):
    """Give each staged file {kind: temporary path} its final name {kind: path}, all or none.

    No existing file is ever replaced: if a final name is taken (another run took it a moment
    ago), the names given so far are taken back and FileExistsError is raised; the staged files
    are then as they were, ready for other names. discard() them in the end.
    """
    published = []  # (final name, the temporary name it was moved from, or None for a link)
    try:
        for kind, temporary in staged.items():
            published.append((targets[kind], temporary if _link(temporary, targets[kind]) else None))
    except BaseException:
        for target, moved_from in published:
            if moved_from is None:
                target.unlink(missing_ok=True)
            else:
                os.replace(target, moved_from)
        raise


def _link(temporary, target):
    """Make ``target`` a name of ``temporary``'s file, or raise FileExistsError -> whether the
    file had to be moved (a file system without hard links, e.g. FAT: there the name is claimed
    by creating it exclusively, and the file renamed onto it)."""
    try:
        os.link(temporary, target)
        return False
    except FileExistsError:
        raise
    except OSError:
        os.close(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        try:
            os.replace(temporary, target)
        except BaseException:
            target.unlink(missing_ok=True)  # the empty file that held the name
            raise
        return True


def discard(staged):
    """Remove the temporary names of staged files {kind: temporary path}."""
    for temporary in staged.values():
        temporary.unlink(missing_ok=True)


def write_new(folder, stem, saves):
    """Write files {suffix: save(file)} under the first free ``stem`` in ``folder`` (stem-2,
    stem-3, ... where one of them is taken) -> their paths. They appear together, and never in
    place of an existing file."""
    folder = Path(folder)
    staged = {}
    try:
        for suffix, save in saves.items():
            staged[suffix] = stage(folder, f"{stem}{suffix}", save)
        for n in range(1, 10_000):
            targets = {suffix: folder / f"{stem}{'' if n == 1 else f'-{n}'}{suffix}" for suffix in saves}
            try:
                publish(staged, targets)
                return list(targets.values())
            except FileExistsError:
                continue
        raise RuntimeError(f"{folder}: no free name for {stem}")
    finally:
        discard(staged)


def write_atomically(path, save):
    """Write ``path`` whole through ``save(file)`` (as stage), replacing what is there (for
    regenerated files such as the docs' figures, not for results)."""
    path = Path(path)
    temporary = stage(path.parent, path.name, save)
    try:
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def encode_png(picture):
    """(H, W, 3) uint8 -> the bytes of an RGB PNG file, its pixels stored uncompressed.

    The rows go unfiltered into deflate's stored blocks: 0.35 ms for a 600x400 overlay on the
    build machine. Compressing them cost 4.3 ms even with zlib's fastest coding (Huffman alone,
    rows "Up" filtered), 40% of the CPU a folder run spends per picture outside the model, for
    a file 0.6x the size (434 against 720 KB); the float32 mask written beside each overlay is
    larger still (938 KB). Measured in bench/README.md.
    """
    height, width, _ = picture.shape
    rows = np.pad(picture.reshape(height, width * 3), ((0, 0), (1, 0)))  # each row: filter 0 (None), pixels
    data = zlib.compress(rows, level=0)

    def chunk(kind, body):
        return [struct.pack(">I", len(body)), kind, body, struct.pack(">I", zlib.crc32(body, zlib.crc32(kind)))]

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    return b"".join([b"\x89PNG\r\n\x1a\n", *chunk(b"IHDR", header), *chunk(b"IDAT", data), *chunk(b"IEND", b"")])


def write_png(file, picture):
    """(H, W, 3) uint8 picture -> a PNG file, written to the open binary ``file``."""
    file.write(encode_png(picture))


def write_npy(file, array):
    """An array -> a .npy file, written to the open binary ``file``. Through a buffer: given the
    file itself, numpy reports a full disk as a short write with no error number ("20400
    requested and 15328 written"), which a run cannot tell from other failures."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    file.write(buffer.getbuffer())


def write_text(file, text):
    """Text -> UTF-8 bytes, written to the open binary ``file``. A file name's undecodable bytes
    (held as surrogates, PEP 383) become U+FFFD: a UTF-8 document cannot hold them."""
    file.write(re.sub("[\udc80-\udcff]", "\ufffd", text).encode("utf-8"))


def write_json(file, data):
    write_text(file, json.dumps(data, indent=2) + "\n")


def write_figure(file, figure):
    """A matplotlib figure -> a PNG file, written to the open binary ``file``, 100 pixels per inch."""
    figure.savefig(file, format="png", dpi=100)
