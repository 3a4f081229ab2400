"""How fast `doctor` checks stored photos, per photo and for a 100k-photo store, on this CPU.

A store of real photos (shared concepts and pool, upscaled to the 1024 px side the store keeps, as
a phone photo would be) is checked three ways: the default check (size and JPEG framing: a stat and
5 bytes read), `--deep` (the whole file hashed, SHA-256), and, as the baseline, the check `doctor`
made before (PIL open + verify of each file). Files are in the page cache (warm): a cold disk adds
its read time to --deep. Medians of --repeats passes.
Run:  python bench/bench_photo_check.py  (writes bench/results/photo_check.json)
"""

import argparse
import hashlib
import json
import os
import tempfile
from pathlib import Path

from measure import median_time, where
from PIL import Image

from yollava_cli.store.photo_check import stored_damage
from yollava_cli.store.photos import jpeg_bytes
from yollava_cli.store.records import StoredPhoto

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def build_store(folder: Path, count: int) -> list[StoredPhoto]:
    sources = sorted(DATA.glob("concepts/*/*/*.jpg")) + sorted(DATA.glob("pool/imagenet-sample/*.jpg"))
    rows = []
    for i, source in enumerate(sources[:count]):
        image = Image.open(source).convert("RGB")
        image = image.resize((1024, round(1024 * image.height / image.width)))
        data = jpeg_bytes(image)
        (folder / f"{i}.jpg").write_bytes(data)
        digest = hashlib.sha256(data).hexdigest()
        rows.append(StoredPhoto(digest, f"{i}.jpg", *image.size, len(data), "", digest))
    return rows


def verify_all(folder: Path, rows: list[StoredPhoto]) -> None:
    for row in rows:
        with Image.open(folder / row.file) as image:
            image.verify()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--photos", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rows = build_store(folder, args.photos)
        timings = {
            "default (size + framing)": median_time(lambda: [stored_damage(folder, r) for r in rows], args.repeats, True),
            "--deep (SHA-256)": median_time(lambda: [stored_damage(folder, r, deep=True) for r in rows], args.repeats, True),
            "before (PIL open + verify)": median_time(lambda: verify_all(folder, rows), args.repeats, True),
        }
    mean_kb = sum(r.bytes for r in rows) / len(rows) / 1024
    result = {"where": where(), "load_average": os.getloadavg(), "photos": len(rows), "mean_stored_kb": round(mean_kb, 1),
              "per_photo_us": {k: round(v / len(rows) * 1e6, 1) for k, v in timings.items()},
              "seconds_per_100k_photos": {k: round(v / len(rows) * 100_000, 1) for k, v in timings.items()},
              "sha256_mb_per_s": round(mean_kb * 1024 * len(rows) / timings["--deep (SHA-256)"] / 1e6, 1)}
    out = REPO / "bench" / "results" / "photo_check.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
