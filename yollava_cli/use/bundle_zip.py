"""Reading the members of a zip nobody vouches for (a bundle someone sent) within a memory budget.

Everything is decided from the central directory before a byte is inflated: only stored or
deflated, unencrypted members, each and all together under a size budget, none inflating more than
MAX_RATIO times (a member of zeros is a few KB on disk and gigabytes in memory). zipfile never
returns more than the size a member declares, so a directory that lies can only make reading
stop early, at a CRC error. Members are hashed in chunks as they are read, and every failure of
the zip layer is one line naming the bundle and the member."""

import hashlib
import zipfile
import zlib
from pathlib import Path

from yollava_cli.errors import UserError

MAX_MEMBER_BYTES = 64 * 2**20
MAX_TOTAL_BYTES = 256 * 2**20  # every member inflated, together
MAX_RATIO = 20  # JPEGs and float32 rows hardly compress; JSON does, but stays small
RATIO_FROM_BYTES = 2**20  # members smaller than this may compress as well as they like
CHUNK = 2**20
METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
# what the zip layer raises on damaged or odd members: bad CRC, bad deflate data, truncation,
# an encrypted member, a method it lacks
ZIP_ERRORS = (zipfile.BadZipFile, zlib.error, EOFError, OSError, RuntimeError, NotImplementedError, ValueError)


def open_zip(path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except ZIP_ERRORS as e:
        raise UserError(f"{path}: not a yollava bundle ({e})") from None


def check_directory(bundle: zipfile.ZipFile, path: Path) -> None:
    """Refuse, before reading anything, a member yollava does not read or that would inflate past the budget."""
    total = 0
    for info in bundle.infolist():
        where = f"{path}: {info.filename}"
        if info.flag_bits & 0x1:
            raise UserError(f"{where} is encrypted; yollava bundles never are (export it again)")
        if info.compress_type not in METHODS:
            raise UserError(f"{where} is compressed with zip method {info.compress_type}; yollava reads only "
                            f"{' and '.join(METHODS.values())} (export it again)")
        if info.file_size > MAX_MEMBER_BYTES:
            raise UserError(f"{where} is {info.file_size} bytes, over the {MAX_MEMBER_BYTES // 2**20} MB limit")
        if info.file_size > RATIO_FROM_BYTES and info.file_size > MAX_RATIO * info.compress_size:
            raise UserError(f"{where} inflates {info.file_size // max(info.compress_size, 1)} times "
                            f"(over {MAX_RATIO}x): not a photo or token rows; refusing the bundle")
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise UserError(f"{path}: its members come to {total} bytes unpacked, over the {MAX_TOTAL_BYTES // 2**20} MB "
                        "bundle limit")


def read_member(bundle: zipfile.ZipFile, name: str, path: Path, checksum: str | None = None) -> bytes:
    """The member's bytes, read in chunks through sha256 and checked against `checksum` if given."""
    try:
        info = bundle.getinfo(name)
    except KeyError:
        raise UserError(f"{path}: not a yollava bundle (no {name})") from None
    digest, chunks = hashlib.sha256(), []
    try:
        with bundle.open(info) as member:
            while chunk := member.read(CHUNK):
                digest.update(chunk)
                chunks.append(chunk)
    except ZIP_ERRORS as e:
        raise UserError(f"{path}: {name} cannot be read ({e}): the bundle is damaged") from None
    if checksum is not None and digest.hexdigest() != checksum:
        raise UserError(f"{path}: checksum mismatch for {name}: the bundle was altered or damaged")
    return b"".join(chunks)
