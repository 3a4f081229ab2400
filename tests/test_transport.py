"""One engine behind every front door (issue #36): a concept travels to a worker as a bundle-format
snapshot, restored there as the registry holds it; `train` runs its concepts through one function
on any executor, and a unit on a remote executor records what training here records."""

import io
import json
import shutil
import zipfile

import pytest
from conftest import with_negatives
from PIL import Image
from safetensors.torch import load_file
from tiny import tiny_llava

from yollava_cli.errors import UserError
from yollava_cli.learning.events import EpochDone
from yollava_cli.learning.executor import LocalExecutor, call
from yollava_cli.learning.train_config import TrainConfig
from yollava_cli.models.cores import one_thread
from yollava_cli.models.vlm import VLM
from yollava_cli.reporting import reporting
from yollava_cli.store.concepts import add_concept
from yollava_cli.store.registry import Registry
from yollava_cli.use.bundle_format import read_bundle
from yollava_cli.use.snapshot import FORMAT, MANIFEST, restore_for_training, training_snapshot
from yollava_cli.use.train import train_concepts

FAST = TrainConfig(k=2, epochs=1, batch_size=8, positive_repeats=1, attributes_per_epoch=2)


def photos(folder, colours) -> list:
    folder.mkdir()
    for i, colour in enumerate(colours):
        Image.new("RGB", (48, 40), colour).save(folder / f"{i}.png")
    return [folder]


@pytest.fixture
def registry(tmp_path):
    """<bo> (3 photos, 12 negatives, a fact, cached answers and vectors) beside <mo> (2 photos, 8 of
    the same negatives)."""
    registry = Registry(tmp_path / "home")
    add_concept(registry, "bo", photos(tmp_path / "bo", [(200 + i * 20, 40, 30) for i in range(3)]), kind="pet")
    add_concept(registry, "mo", photos(tmp_path / "mo", [(30, 200, 40 + i * 50) for i in range(2)]))
    with_negatives(registry, "bo", tmp_path / "negatives")
    with_negatives(registry, "mo", tmp_path / "mo-negatives", count=8)
    registry.add_facts(registry.concept("bo").id, ["is scared of the vacuum cleaner"])
    bo, mo = (registry.concept_photos(registry.concept(n).id) for n in ("bo", "mo"))
    registry.store_answer(bo[0].sha256, "tiny", "What color is it?", "Red.")
    registry.store_answer(mo[0].sha256, "tiny", "What color is it?", "Green.")  # not one of bo's: stays here
    negative = registry.negative_rows(registry.concept("bo").id)[0]
    registry.store_embeddings("e1", {bo[0].sha256: b"\x01" * 8, negative.sha256: b"\x02" * 8, mo[1].sha256: b"\x03" * 8})
    registry.store_embeddings("e2", {bo[1].sha256: b"\x04" * 12})
    return registry


def as_stored(registry: Registry, name: str) -> dict:
    """What training reads of the concept, with every photo's stored bytes."""
    concept = registry.concept(name)
    read = lambda photo: (registry.root / photo.file).read_bytes()
    own = [(p.sha256, p.width, p.height, p.source_path, p.added_at, read(p)) for p in registry.concept_photos(concept.id)]
    negatives = [(n.sha256, n.kind, n.score, n.source_path, n.embedder, read(n)) for n in registry.negative_rows(concept.id)]
    others = sorted((o.sha256, o.width, o.height, read(o)) for o in registry.other_concepts_photos(concept.id))
    shas = [p[0] for p in own] + [n[0] for n in negatives] + [o[0] for o in others]
    return {"status": concept.status, "kind": concept.kind, "photos": own, "negatives": negatives, "others": others,
            "facts": [f.text for f in registry.facts(concept.id)], "answers": sorted(registry.answers([p[0] for p in own])),
            "vectors": {e: registry.embeddings(e, shas) for e in ("e1", "e2")}}


def test_a_training_snapshot_is_a_bundle_restored_as_the_registry_holds_the_concept(registry, tmp_path):
    data = training_snapshot(registry, "bo")
    with zipfile.ZipFile(io.BytesIO(data)) as snapshot:
        manifest = json.loads(snapshot.read(MANIFEST))
        assert manifest["format"] == FORMAT and set(manifest["checksums"]) == set(snapshot.namelist()) - {MANIFEST}
    with Registry(tmp_path / "copy") as copy:
        restore_for_training(copy, data)
        restored = as_stored(copy, "bo")
        assert restored == as_stored(registry, "bo")
        first = registry.concept_photos(registry.concept("bo").id)[0].sha256
        assert restored["vectors"]["e1"] and restored["answers"] == [[first, "tiny", "What color is it?", "Red."]]
        assert len(copy.answers()) == 1 and len(restored["others"]) == 2  # mo's answer stayed; its photos came as others

    # a member altered on the way is refused, as an altered bundle is
    tampered = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(tampered, "w") as dst:
        for item in src.namelist():
            dst.writestr(item, b"not the photo" if item.startswith("negatives/") else src.read(item))
    with Registry(tmp_path / "other") as other, pytest.raises(UserError, match="checksum mismatch for negatives/"):
        restore_for_training(other, tampered.getvalue())

    # `import` reads bundles only: a snapshot with training parts is refused, not half imported
    (tmp_path / "bo.yollava").write_bytes(data)
    with pytest.raises(UserError, match="unexpected content"):
        read_bundle(tmp_path / "bo.yollava")


class InProcessRemote(LocalExecutor):
    """An executor whose units cannot reach this machine's disk (as Ray's workers cannot), run in
    this process: `train` sends snapshots and records what comes back."""

    local = False

    def run(self, fn, units, on_result):
        self.units = len(units)
        for unit in units:
            on_result(unit, call(self.env, fn, unit))

    def report(self):
        return {"workers": 1, "units_per_worker": {"here": self.units}}


@pytest.fixture(scope="module")
def embedder():
    from yollava_cli.learning.embeddings import load_embedder

    return load_embedder("efficientnet-lite0")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """The tiny LLaVA as a model folder: an executor loads it by path, as it would a real one."""
    folder = tmp_path_factory.mktemp("tiny-model")
    model, processor = tiny_llava()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return str(folder)


def test_train_on_a_remote_executor_records_what_training_here_records(registry, embedder, tiny_model, tmp_path):
    """Two concepts one after another on each executor, each trained as it would be alone (a
    second unit on a used model got other token ids, and other sums: <mo> trained 6.513 after
    <bo> where alone it trained 6.499), in place here and from snapshots there."""
    for copy in ("remote", "alone"):
        shutil.copytree(registry.root, tmp_path / copy)
    with one_thread():  # as each Ray worker runs: sums add up in one order
        here = train_concepts(registry, ["bo", "mo"], LocalExecutor(tiny_model, loaded_embedder=embedder), FAST)
        with Registry(tmp_path / "remote") as remote:
            with pytest.raises(UserError, match="drop --ray"):
                train_concepts(remote, ["bo"], InProcessRemote(tiny_model), FAST, resume=True)
            there = train_concepts(remote, ["bo", "mo"], InProcessRemote(tiny_model, loaded_embedder=embedder), FAST)
            stored_there = [stored(remote, name) for name in ("bo", "mo")]
        with Registry(tmp_path / "alone") as alone:
            [mo] = train_concepts(alone, ["mo"], LocalExecutor(tiny_model, loaded_embedder=embedder), FAST)["concepts"]
    assert "ray" not in here and there["ray"]["units_per_worker"] == {"here": 2}
    for a, b in zip(here["concepts"] + [here["concepts"][1]], there["concepts"] + [mo]):
        for result in (a, b):
            result.pop("checkpoint", None)
            for epoch in result["history"]:
                epoch.pop("seconds", None)
        assert a == b and a["thresholds"].keys() == {"tokens", "head", "fused"}
    assert [stored(registry, name) for name in ("bo", "mo")] == stored_there


def stored(registry: Registry, name: str) -> tuple:
    """The concept's status, current checkpoint's metrics and tensors, runs and cached answers."""
    concept = registry.concept(name)
    checkpoint = registry.current_checkpoint(concept.id)
    tensors = {key: value.tolist() for key, value in load_file(registry.root / checkpoint.file).items()}
    runs = registry.db.execute("SELECT status FROM runs WHERE concept_id = ?", [concept.id]).fetchall()
    return concept.status, json.loads(checkpoint.metrics), tensors, runs, sorted(registry.answers())


def test_ctrl_c_keeps_the_best_so_far_and_starts_no_further_concept(registry, embedder):
    """The first concept's training is interrupted after its first epoch: it keeps that epoch, and
    the second concept is not trained behind the user's back."""

    def interrupt(event):
        if isinstance(event, EpochDone):
            raise KeyboardInterrupt

    config = TrainConfig(k=2, epochs=3, batch_size=8, positive_repeats=1, attributes_per_epoch=2)
    with reporting(interrupt):
        result = train_concepts(registry, ["bo", "mo"], LocalExecutor(vlm=VLM(*tiny_llava(), "tiny"), loaded_embedder=embedder),
                                config)
    [bo] = result["concepts"]
    assert bo["concept"] == "bo" and bo["interrupted"] and bo["best_epoch"] == 1
    assert registry.concept("bo").status == "trained" and registry.concept("mo").status == "mined"
    assert (registry.root / "checkpoints" / "bo" / "resume.safetensors").exists()  # what --resume continues

