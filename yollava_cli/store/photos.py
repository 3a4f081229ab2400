"""Reading users' photos: every odd file becomes either a clean RGB image or a one-line reason."""

import hashlib
import io
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG

from PIL import Image, ImageOps, UnidentifiedImageError

from yollava_cli.errors import UserError
from yollava_cli.store.fileio import atomic_write_bytes, path_text

PHOTO_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".heic", ".heif"}
MAX_FILE_BYTES = 100 * 1024 * 1024
READ_CHUNK = 1 << 20  # files are read this much at a time, never whole
MAX_PIXELS = 50_000_000  # refuse before decoding: a decompression bomb must not eat the RAM
STORE_MAX_SIDE = 1024  # photos are downscaled on import; models look at <= 768 px anyway
HEIF_BRANDS = (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1", b"avif")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_TEXT_CHUNKS = (b"tEXt", b"zTXt", b"iTXt")


class BadPhoto(Exception):
    """This one file cannot be used; the message says why in a few words."""


@dataclass
class Photo:
    path: Path
    sha256: str  # of the source file's bytes: the same file added twice is one photo
    image: Image.Image  # RGB, EXIF orientation applied, downscaled to STORE_MAX_SIDE


@dataclass
class Staged:
    source: Path  # the file as given
    file: Path  # its downscaled JPEG, in a staging folder
    size: tuple[int, int]


def stage_photos(paths: Iterable[Path], folder: Path, strict: bool = False) -> tuple[dict[str, Staged], list[tuple[str, str]]]:
    """Read, downscale and encode each photo into `folder` as a JPEG, one at a time: a photo's
    pixels are dropped before the next is read. Returns {sha256: Staged} (a file given twice is
    one photo, from the path seen last) and the (path, reason) of each unusable file, or with
    `strict` a one-line error at the first."""
    staged: dict[str, Staged] = {}
    skipped = []
    for path in paths:
        try:
            photo = read_photo(path)
        except BadPhoto as e:
            if strict:
                raise UserError(f"{path_text(path)}: {e} (--strict refuses the whole add; drop --strict to skip it)") from None
            skipped.append((path_text(path), str(e)))
            continue
        file = folder / f"{photo.sha256}.tmp"  # doctor takes a stale .tmp of a dead add for debris
        if photo.sha256 not in staged:
            atomic_write_bytes(file, jpeg_bytes(photo.image))
        staged[photo.sha256] = Staged(path, file, photo.image.size)
    return staged, skipped


def expand_photo_paths(inputs: list[Path], on_found: Callable[[int], None] | None = None) -> list[Path]:
    """Files as given, and the photo-suffixed files under each directory (recursive, sorted), each
    once (a folder and a photo in it both given: the photo is listed once); `on_found(count)` after
    each directory walked, for a folder as big as a whole disk."""
    found: list[Path] = []
    for given in inputs:
        if not given.exists():
            raise UserError(f"{path_text(given)}: no such file or directory")
        if given.is_dir():
            inside = []
            for dirpath, _dirs, names in os.walk(given):  # followlinks=False: no symlink loops
                inside += [Path(dirpath) / name for name in names
                           if not name.startswith(".") and Path(name).suffix.lower() in PHOTO_SUFFIXES]
                if on_found:
                    on_found(len(found) + len(inside))
            inside.sort()
            if not inside:
                raise UserError(
                    f"{path_text(given)}: no photos in this folder (looked for {', '.join(sorted(PHOTO_SUFFIXES))})"
                )
            found.extend(inside)
        else:
            found.append(given)
    first: dict[str, Path] = {}
    for path in found:
        first.setdefault(os.path.abspath(path), path)
    return list(first.values())


def read_photo(path: Path, max_side: int = STORE_MAX_SIDE) -> Photo:
    """Decode and normalise one photo, or raise BadPhoto with the reason."""
    data = photo_bytes(path)
    return Photo(path=path, sha256=hashlib.sha256(data).hexdigest(), image=decode(data, max_side))


def photo_bytes(path: Path) -> bytes:
    """The file's bytes after the checks that need no decoding (decode() does the rest)."""
    data = b"".join(photo_chunks(path))
    if not data:
        raise BadPhoto("empty file (0 bytes)")
    if data[4:8] == b"ftyp" and data[8:12] in HEIF_BRANDS:
        raise BadPhoto("HEIC/HEIF/AVIF is not supported; convert it to JPEG or PNG first")
    return data


def photo_sha256(path: Path) -> str:
    """The hash of the bytes photo_bytes() would read, without holding them all (pool scans)."""
    digest = hashlib.sha256()
    for chunk in photo_chunks(path):
        digest.update(chunk)
    return digest.hexdigest()


def photo_chunks(path: Path) -> Iterator[bytes]:
    """The one way a user's file is read (add, pool scans, find, ask): a regular file only (a FIFO
    or device, or a symlink to one, would block or never end), at most MAX_FILE_BYTES, in bounded
    chunks. Checked before opening and again on the open file, so a swap in between is caught."""
    try:
        if not path.exists():
            raise BadPhoto("no such file")
        check_regular(path.stat())  # before opening: opening a device can have effects of its own
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | getattr(os, "O_CLOEXEC", 0))
        with os.fdopen(fd, "rb", buffering=0) as f:
            check_regular(os.fstat(f.fileno()))
            read = 0
            while chunk := f.read(READ_CHUNK):
                read += len(chunk)
                if read > MAX_FILE_BYTES:  # it grew after the check, or its size lied
                    raise BadPhoto(too_big())
                yield chunk
    except OSError as e:
        raise BadPhoto(f"cannot read it ({e.strerror or e})") from None


def check_regular(stat: os.stat_result) -> None:
    if not S_ISREG(stat.st_mode):
        raise BadPhoto("not a regular file")
    if stat.st_size > MAX_FILE_BYTES:
        raise BadPhoto(too_big())


def too_big() -> str:
    return f"file is over {MAX_FILE_BYTES // 2**20} MB"


def decode(data: bytes, max_side: int) -> Image.Image:
    """The photo's pixels, upright, RGB, at most `max_side`; or BadPhoto. Every step runs inside
    the one boundary: a decoder or metadata parser can fail in ways no list of exception types
    foresees (a malformed EXIF block raises struct.error from exif_transpose), and any such failure
    means this one file is unusable, never that the command ends."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Corrupt EXIF data" and the like: the outcome says enough
            return normalised(Image.open(io.BytesIO(without_png_text(data))), max_side)
    except BadPhoto:
        raise
    except UnidentifiedImageError:
        raise BadPhoto("not an image format Pillow can read (use JPEG or PNG)") from None
    except Image.DecompressionBombError:
        raise BadPhoto(f"image is over the {MAX_PIXELS // 1_000_000} MP limit; downscale it first") from None
    except Exception as e:  # noqa: BLE001 - see the docstring
        raise BadPhoto(f"corrupt or truncated image data ({type(e).__name__}: {e})") from None


def normalised(image: Image.Image, max_side: int) -> Image.Image:
    if image.width * image.height > MAX_PIXELS:
        raise BadPhoto(
            f"image is {image.width}x{image.height} pixels, over the "
            f"{MAX_PIXELS // 1_000_000} MP limit; downscale it first"
        )
    image.load()
    image = to_rgb(ImageOps.exif_transpose(image))
    image.info = {}  # the source's comments and the like are not the photo (and JPEG caps a comment at 64 KB)
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return image


def without_png_text(data: bytes) -> bytes:
    """A PNG without its text chunks (comments, captions, an editor's history), else `data` as it
    is: the pixels are the same, and Pillow refuses a text chunk over 1 MB (MAX_TEXT_CHUNK) as if
    the image were damaged. A chunk cut short ends the walk; decoding then says what is wrong."""
    if not data.startswith(PNG_SIGNATURE):
        return data
    kept, at, dropped = [PNG_SIGNATURE], len(PNG_SIGNATURE), False
    while at + 12 <= len(data):
        end = at + 12 + int.from_bytes(data[at : at + 4], "big")  # length, type, data, CRC
        if end > len(data):
            break
        if data[at + 4 : at + 8] in PNG_TEXT_CHUNKS:
            dropped = True
        else:
            kept.append(data[at:end])
        at = end
    return b"".join([*kept, data[at:]]) if dropped else data


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB for any mode: alpha over white, 16-bit and float scaled to 8 bits, CMYK/palette converted."""
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        import numpy as np  # only here: numpy costs every command ~40 ms of start-up

        pixels = np.asarray(image, dtype=np.float64)
        top = pixels.max() if pixels.size else 0
        scale = 255.0 / top if top > 255 else 1.0
        image = Image.fromarray(np.clip(pixels * scale, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def jpeg_bytes(image: Image.Image, quality: int = 95) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()
