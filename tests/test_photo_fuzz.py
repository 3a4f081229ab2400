"""The photo-decoding boundary under fuzzing: thousands of seeded mutations of real photos (byte
flips, truncations, EXIF corruption) go through the intake `add` uses, and each one is either a
photo or skipped with its reason, never another exception; then `add` of a folder mixing good and
broken photos stores the good ones and names each broken one."""

import io
import random
import struct
import zlib

from conftest import invoke, shared_data
from PIL import Image, TiffTags

from yollava_cli.store.photos import BadPhoto, read_photo, stage_photos

SEED = 33
PER_SEED = 250  # 4 photos x 3 formats x 250 = 3000 files, decoded at 64x64: seconds
SIDE = 64
TAG_IDS = sorted(TiffTags.TAGS_V2)  # retagging an entry as a known tag of another type is what broke exif_transpose


def exif_block() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: exif_transpose rotates, and rewrites the EXIF without it
    exif[0x010F] = "Canon"
    exif[0x0131] = "an editor"
    exif[0x0132] = "2024:05:01 10:00:00"
    exif[0x8769] = {0x9003: "2024:05:01 10:00:00", 0x920A: 4.5}
    return exif.tobytes()


def seeds() -> list[tuple[str, bytes]]:
    """Real photos, small, in JPEG, PNG and WebP, each with an EXIF block."""
    photos = [shared_data() / "concepts" / s / "train" / "00.jpg" for s in ("dog", "cat", "backpack", "clock")]
    out = []
    for photo in photos:
        image = Image.open(photo).convert("RGB").resize((SIDE, SIDE))
        for fmt in ("JPEG", "PNG", "WEBP"):
            buffer = io.BytesIO()
            image.save(buffer, fmt, exif=exif_block())
            out.append((fmt, buffer.getvalue()))
    return out


def tiff_at(data: bytes) -> int:
    return data.find(b"MM\x00*")  # Pillow writes EXIF big-endian


def corrupt_exif(data: bytearray, rng: random.Random) -> bytearray:
    """Change IFD0 entries (tag, type, count, value) or bytes inside the EXIF block; a PNG's eXIf
    chunk gets its CRC made right again, so the corruption reaches the EXIF parser."""
    start = tiff_at(data)
    count = struct.unpack(">H", data[start + 8 : start + 10])[0]
    for _ in range(rng.randint(1, 4)):
        entry = start + 10 + 12 * rng.randrange(count)
        field = rng.choice(("tag", "type", "count", "value", "byte"))
        if field == "tag":
            data[entry : entry + 2] = struct.pack(">H", rng.choice(TAG_IDS))
        elif field == "type":
            data[entry + 2 : entry + 4] = struct.pack(">H", rng.randrange(20))
        elif field == "count":
            data[entry + 4 : entry + 8] = struct.pack(">I", rng.choice((0, 2, 255, 2**16, 2**31)))
        elif field == "value":
            data[entry + 8 : entry + 12] = struct.pack(">I", rng.randrange(2**32))
        else:
            data[start + rng.randrange(120)] = rng.randrange(256)
    chunk = data.find(b"eXIf")
    if chunk > 0:
        length = struct.unpack(">I", data[chunk - 4 : chunk])[0]
        body = bytes(data[chunk : chunk + 4 + length])
        data[chunk + 4 + length : chunk + 8 + length] = struct.pack(">I", zlib.crc32(body))
    return data


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    kind = rng.random()
    if kind < 0.3:
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] = rng.randrange(256)
    elif kind < 0.5:
        out = out[: rng.randrange(1, len(out))]
    else:
        out = corrupt_exif(out, rng)
    return bytes(out)


def test_thousands_of_mutated_photos_are_each_a_photo_or_a_skip(tmp_path):
    rng = random.Random(SEED)
    folder, staging = tmp_path / "mutated", tmp_path / "staging"
    folder.mkdir()
    staging.mkdir()
    paths = []
    for i, (fmt, data) in enumerate(seeds()):
        for j in range(PER_SEED):
            path = folder / f"{i:02d}-{j:04d}.{fmt.lower()}"
            path.write_bytes(mutate(data, rng))
            paths.append(path)
    outcomes = {}
    for path in paths:  # the decoding boundary of add, pool scans, find and ask: an exception is the bug
        try:
            outcomes[path] = read_photo(path, max_side=SIDE).image.size
        except BadPhoto as e:
            outcomes[path] = str(e)
    skipped = [p for p, outcome in outcomes.items() if isinstance(outcome, str)]
    assert all(outcomes[p] and "\n" not in outcomes[p] for p in skipped)
    for fmt in ("jpeg", "png", "webp"):  # both outcomes are exercised, in each format
        assert 0.1 < sum(p.suffix == f".{fmt}" for p in skipped) / (len(paths) / 3) < 0.9, fmt
    # and add's staging of them, on a slice (it writes and syncs a file per photo)
    some = paths[::10]
    staged, skips = stage_photos(some, staging)
    assert {str(p) for p in some if p in skipped} == {p for p, _ in skips}
    good = [p for p in some if p not in skipped]
    assert {photo.source for photo in staged.values()} <= set(good)
    assert len(staged) == len({p.read_bytes() for p in good})  # a file twice over is one photo


def broken_exif(fmt: str) -> bytes:
    """A photo whose EXIF says its Make (text) is the ImageWidth (a number): Pillow's
    exif_transpose raised struct.error rewriting it."""
    image = Image.open(shared_data() / "concepts" / "dog" / "test" / "04.jpg").convert("RGB").resize((SIDE, SIDE))
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "Canon"
    buffer = io.BytesIO()
    image.save(buffer, fmt, exif=exif.tobytes())
    return buffer.getvalue().replace(b"\x01\x0f\x00\x02", b"\x01\x00\x00\x02", 1)


def test_add_of_a_folder_with_broken_photos_stores_the_good_and_names_each_bad(home, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    for photo in sorted((shared_data() / "concepts" / "dog" / "train").glob("*.jpg")):
        (folder / photo.name).write_bytes(photo.read_bytes())
    (folder / "exif.jpg").write_bytes(broken_exif("JPEG"))
    (folder / "exif.webp").write_bytes(broken_exif("WEBP"))
    (folder / "cut.png").write_bytes(seeds()[1][1][:400])
    result = invoke("add", "bo", folder, "--no-train", home=home)
    assert result.returncode == 0, result.stderr
    assert "3 new photo(s), 3 in all" in result.stdout
    skipped = sorted(line for line in result.stderr.splitlines() if line.startswith("skipped "))
    assert [line.split(":")[0] for line in skipped] == [f"skipped {folder / name}" for name in ("cut.png", "exif.jpg", "exif.webp")]
    assert all("corrupt or truncated image data" in line for line in skipped), skipped
