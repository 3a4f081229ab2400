"""Peak memory of `find`, `add` and `pool add` over few vs many photos: it must not grow with their
number.

Each run is the real CLI in a child process on a fresh copy of one prepared data dir (a concept
trained on a tiny random-init model, so it has a concept head, and the ImageNet sample as its pool),
so no run finds another's cached embeddings or stored photos. The photos are generated JPEGs of a
camera-like size (1600x1200, about 0.8 MB each: a gradient under noise, each tinted differently so
every file is a new photo). Peak memory is the child's maximum resident set (os.wait4's ru_maxrss),
not a sampled figure; it counts the parent's resident set at the fork too, so the parent stays small
(its own peak is recorded). Measured per count, interleaved, `--repeats` times; the target is the
median at the largest count within 1.2x of the median at the smallest.

    python bench/bench_memory.py [--counts 30 300 3000] [--repeats 3]   # writes bench/results/memory.json
"""

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import where
from PIL import Image
from setup_concept import DATA

REPO = Path(__file__).resolve().parents[1]
SIZE = (1600, 1200)
TARGET = 1.2
COMMANDS = {  # the cheapest signal for find (no language model), and add that only stores
    "find": lambda folder: ["find", "bo", folder, "--by", "head", "--json"],
    "add": lambda folder: ["add", "many", folder, "--no-train", "--json"],
    "pool add": lambda folder: ["pool", "add", "many", folder, "--json"],
}


def env(home: Path) -> dict:
    return {**os.environ, "YOLLAVA_HOME": str(home), "YOLLAVA_EMBEDDER": "efficientnet-lite0",
            "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}


def cli(home: Path, *args) -> dict:
    """Run the CLI to the end; its exit code, wall time and peak resident memory in MB."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "yollava_cli", *map(str, args)], env=env(home),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stderr = proc.stderr.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode not in (0, 1):  # find exits 1 when nothing matches
        raise SystemExit(f"{' '.join(map(str, args))} failed ({proc.returncode}): {stderr.decode()[-2000:]}")
    return {"exit": proc.returncode, "seconds": round(time.perf_counter() - start, 2),
            "peak_mb": round(usage.ru_maxrss / 1024, 1)}  # ru_maxrss is in KB on Linux


def photos(folder: Path, count: int, seed: int = 0) -> Path:
    """`count` distinct camera-sized JPEGs (kept between runs of the bench in the same folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    noise = Image.effect_noise(SIZE, 40).convert("RGB")
    ramp = Image.linear_gradient("L").resize(SIZE)
    base = Image.merge("RGB", (ramp, ramp.transpose(Image.Transpose.ROTATE_90).resize(SIZE), ramp))
    for i in range(count):
        tint = tuple(rng.randrange(256) for _ in range(3))
        target = folder / f"{i:05d}.jpg"
        if not target.exists():  # written whole or not at all: an interrupted run leaves no truncated photo
            partial = folder / f".{target.name}.partial"
            Image.blend(Image.blend(base, Image.new("RGB", SIZE, tint), 0.5), noise, 0.3).save(partial, format="JPEG", quality=92)
            partial.replace(target)
    return folder


def subset(source: Path, folder: Path, count: int) -> Path:
    """The first `count` photos of `source`, hard-linked (no copies on disk)."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(source.iterdir())[:count]:
        if not (folder / path.name).exists():
            os.link(path, folder / path.name)
    return folder


def prepared_home(work: Path) -> Path:
    """A data dir with <bo> (the shared dog) trained on a tiny model, so `find --by head` works. The
    model is built in a child: this process must stay small (see the module docstring)."""
    home, model_dir = work / "home", work / "tiny-model"
    build = (f"import sys; sys.path.insert(0, {str(REPO / 'tests')!r}); from tiny import tiny_llava; "
             f"model, processor = tiny_llava(); model.save_pretrained({str(model_dir)!r}); "
             f"processor.save_pretrained({str(model_dir)!r})")
    subprocess.run([sys.executable, "-c", build], env=env(home), check=True, capture_output=True)
    for step in (["add", "bo", DATA / "concepts" / "dog" / "train", "--kind", "pet", "--no-train"],
                 ["pool", "add", "imagenet", DATA / "pool" / "imagenet-sample"],
                 ["train", "bo", "--model", model_dir, "--epochs", "1", "--k", "4"]):
        cli(home, *step)
    return home


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--counts", type=int, nargs="+", default=[30, 300, 3000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--photos", type=Path, default=Path(tempfile.gettempdir()) / f"yollava-bench-memory-photos-{SIZE[0]}x{SIZE[1]}",
                        help="where the generated photos are kept between runs")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "memory.json")
    args = parser.parse_args()
    counts = sorted(args.counts)

    work = Path(tempfile.mkdtemp(prefix="yollava-bench-memory-"))
    started = time.perf_counter()
    source = photos(args.photos, counts[-1])
    folders = {n: subset(source, work / f"photos-{n}", n) for n in counts}
    print(f"{counts[-1]} photos ready in {time.perf_counter() - started:.0f} s", file=sys.stderr)
    template = prepared_home(work)
    own_peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    runs = {command: {n: [] for n in counts} for command in COMMANDS}
    for repeat in range(args.repeats):
        for command, line in COMMANDS.items():
            for n in counts:
                home = work / "run"
                shutil.rmtree(home, ignore_errors=True)
                shutil.copytree(template, home)
                run = cli(home, *line(folders[n]))
                runs[command][n].append(run)
                print(f"{command} {n} photos #{repeat + 1}: {run['peak_mb']} MB peak, {run['seconds']} s", file=sys.stderr)
    shutil.rmtree(work)

    summary = {}
    for command, by_count in runs.items():
        peaks = {n: statistics.median(r["peak_mb"] for r in rs) for n, rs in by_count.items()}
        ratio = peaks[counts[-1]] / peaks[counts[0]]
        summary[command] = {"median_peak_mb": peaks,
                            "median_seconds": {n: statistics.median(r["seconds"] for r in rs) for n, rs in by_count.items()},
                            f"ratio_{counts[-1]}_vs_{counts[0]}": round(ratio, 3), "within_target": ratio <= TARGET}
    sizes = [p.stat().st_size for p in sorted(source.iterdir())[:counts[-1]]]
    report = {"summary": summary, "bench_process_peak_mb": own_peak, "target": f"peak at {counts[-1]} photos within {TARGET}x of the peak at {counts[0]}",
              "photos": {"size": list(SIZE), "mean_mb": round(statistics.mean(sizes) / 2**20, 2),
                         "total_gb": round(sum(sizes) / 2**30, 2)},
              "commands": {c: " ".join(map(str, line("PHOTOS"))) for c, line in COMMANDS.items()},
              "runs": runs, "where": where(), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
