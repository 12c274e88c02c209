"""Staging original files into HDF5 and reading them back, as prepare_data and the engine do."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import requires, run_cli
from formats.idx import NAMES, write_idx_dataset

from hpclab.config import compose
from hpclab.data import H5Split, RunData, describe, stage
from hpclab.data.hdf5 import read_rows
from hpclab.data.loader import EpochBatches
from hpclab.data.prepare import DataMissing

DEBIAN_FMNIST = Path("/usr/share/datasets/fashion-mnist")


def test_idx_round_trip_through_prepare_data(workdir, tmp_path):
    mirror = tmp_path / "mirror"
    arrays = write_idx_dataset(mirror, n_train=120, n_test=30)
    proc = run_cli("prepare_data.py", "data=fashion_mnist", f"data.mirrors=[{mirror}]", cwd=workdir)
    path = workdir / "data" / "fashion_mnist.h5"
    assert str(path) in proc.stdout
    info = describe(path)
    assert info["splits"]["train"]["images"] == [120, 1, 28, 28]
    assert info["class_names"][0] == "T-shirt/top" and info["source"] == str(mirror)
    digest = hashlib.sha256((mirror / f"{NAMES['train'][0]}.gz").read_bytes()).hexdigest()
    assert info["sha256"][str(mirror / f"{NAMES['train'][0]}.gz")] == digest
    split = H5Split(path, "test")
    loaded = split.load()
    assert loaded["images"].dtype == torch.uint8
    np.testing.assert_array_equal(loaded["images"][:, 0].numpy(), arrays["test"][0])
    np.testing.assert_array_equal(loaded["labels"].numpy(), arrays["test"][1])
    # a second call finds the prepared file and does not rewrite it
    mtime = path.stat().st_mtime_ns
    run_cli("prepare_data.py", "data=fashion_mnist", f"data.mirrors=[{mirror}]", cwd=workdir)
    assert path.stat().st_mtime_ns == mtime


def test_uncompressed_idx_files_are_read_too(workdir, tmp_path):
    mirror = tmp_path / "plain"
    arrays = write_idx_dataset(mirror, n_train=40, n_test=10, gz=False)
    cfg = compose(["data=mnist", f"data.mirrors=[{mirror}]", "data.download=false"])
    path = stage(cfg)
    np.testing.assert_array_equal(H5Split(path, "train").load()["labels"].numpy(), arrays["train"][1])


def test_real_fashion_mnist_from_the_debian_mirror(workdir):
    requires(lambda: None if DEBIAN_FMNIST.is_dir() else "Debian's dataset-fashion-mnist is not installed")
    run_cli("prepare_data.py", "data=fashion_mnist", cwd=workdir)
    info = describe(workdir / "data" / "fashion_mnist.h5")
    assert info["splits"]["train"]["images"] == [60000, 1, 28, 28]
    assert info["splits"]["test"]["labels"] == [10000]
    assert info["source"] == str(DEBIAN_FMNIST)


@pytest.fixture
def http_mirror(tmp_path):
    """A directory served over HTTP on 127.0.0.1 (a stand-in for the dataset's web mirror)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a, **k: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()


def test_torchvision_download_path_from_a_local_http_mirror(workdir, tmp_path, monkeypatch, http_mirror):
    """The real downloader (torchvision's FashionMNIST, md5-checked) fetching over HTTP."""
    import torchvision.datasets as tvd

    served, url = http_mirror
    arrays = write_idx_dataset(served, n_train=50, n_test=20)
    resources = [(f.name, hashlib.md5(f.read_bytes()).hexdigest()) for f in sorted(served.iterdir())]
    monkeypatch.setattr(tvd.FashionMNIST, "mirrors", [url])
    monkeypatch.setattr(tvd.FashionMNIST, "resources", resources)
    cfg = compose(["data=fashion_mnist", f"data.mirrors=[{tmp_path / 'empty'}]"])
    from hpclab.data.sources import SOURCES

    # skip the Debian mirror so the download path is taken
    monkeypatch.setitem(SOURCES, "fashion_mnist", dataclasses.replace(SOURCES["fashion_mnist"], mirrors=()))
    path = stage(cfg)
    assert describe(path)["splits"]["train"]["images"] == [50, 1, 28, 28]
    np.testing.assert_array_equal(H5Split(path, "train").load()["labels"].numpy(), arrays["train"][1])
    assert (workdir / "data" / "raw" / "fashion_mnist" / "FashionMNIST" / "raw").is_dir()


def test_no_source_gives_a_clear_error_and_writes_nothing(workdir, tmp_path):
    proc = run_cli(
        "prepare_data.py",
        "data=mnist",
        f"data.mirrors=[{tmp_path / 'nothing'}]",
        "data.download=false",
        cwd=workdir,
        check=False,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "cannot stage 'mnist'" in proc.stderr
    assert "prepare_data.py data=mnist data.mirrors=" in proc.stderr
    assert not list((workdir / "data").glob("*.h5")) if (workdir / "data").exists() else True


def test_missing_prepared_file_names_the_staging_command(workdir):
    with pytest.raises(DataMissing, match="python jobs/prepare_data.py data=fashion_mnist"):
        RunData(compose(["experiment=ae_latent"]), torch.device("cpu"))
    with pytest.raises(DataMissing, match="python jobs/prepare_data.py data=fashion_mnist data.image_size=32$"):
        RunData(compose(["experiment=ae_latent", "data.image_size=32"]), torch.device("cpu"))


def test_image_size_is_honoured_at_staging_for_sources_that_do_not_resize(workdir, tmp_path):
    """IDX (and CIFAR-10) files hold one size; data.image_size resizes them once at staging, and a
    file staged at another size under the sized name is refused with the command that fixes it."""
    import h5py
    from formats.cifar import write_cifar10

    mirror = tmp_path / "idx"
    arrays = write_idx_dataset(mirror, n_train=50, n_test=20)
    proc = run_cli(
        "prepare_data.py",
        "data=fashion_mnist",
        "data.image_size=32",
        f"data.mirrors=[{mirror}]",
        "data.download=false",
        cwd=workdir,
    )
    path = workdir / "data" / "fashion_mnist_32px.h5"
    assert f"{path}: test [20, 1, 32, 32], train [50, 1, 32, 32]" in proc.stdout
    with h5py.File(path) as f:
        images = f["train/images"][()]
        assert json.loads(f.attrs["resized_from"]) == {"train": [28, 28], "test": [28, 28]}
        np.testing.assert_array_equal(f["train/labels"][()], arrays["train"][1])
    # the resized image is the original, smoothly interpolated: same mean brightness, same layout
    original = arrays["train"][0].astype(float)
    assert abs(images.astype(float).mean() - original.mean()) < 2.0
    back = torch.nn.functional.interpolate(
        torch.from_numpy(images).float(), size=(28, 28), mode="bilinear", antialias=True
    )[:, 0].numpy()
    assert np.corrcoef(back.ravel(), original.ravel())[0, 1] > 0.95

    write_cifar10(tmp_path / "cifar", n_train=10, n_test=4, seed=2)
    small = stage(
        compose(["data=cifar10", "data.image_size=16", f"data.mirrors=[{tmp_path / 'cifar'}]", "data.download=false"])
    )
    assert describe(small)["splits"]["train"]["images"] == [10, 3, 16, 16]

    # a file holding another size under the sized name (staged before sizes were honoured)
    stale = workdir / "data" / "mnist_32px.h5"
    stage(compose(["data=mnist", f"data.mirrors=[{mirror}]", "data.download=false"])).rename(stale)
    cfg = compose(["data=mnist", "data.image_size=32", f"data.mirrors=[{mirror}]", "data.download=false"])
    with pytest.raises(
        DataMissing, match=r"holds 28x28 px images, not data.image_size=32; .*data.image_size=32 force=true"
    ):
        stage(cfg)
    with pytest.raises(DataMissing, match="holds 28x28 px images"):
        RunData(cfg, torch.device("cpu"))
    assert describe(stage(cfg, force=True))["splits"]["train"]["images"] == [50, 1, 32, 32]


def test_resizing_keeps_masks_binary():
    from hpclab.data.hdf5 import DatasetArrays
    from hpclab.data.prepare import resize_staged

    masks = np.zeros((2, 1, 8, 8), np.uint8)
    masks[:, :, 2:6, 2:6] = 1
    staged = DatasetArrays(
        splits={"train": {"images": np.full((2, 1, 8, 8), 200, np.uint8), "masks": masks, "labels": np.array([0, 1])}},
        class_names=["a", "b"],
        inputs=[],
        source="test",
    )
    out = resize_staged(staged, 20)
    assert out.splits["train"]["images"].shape == (2, 1, 20, 20) and set(np.unique(out.splits["train"]["images"])) == {
        200
    }
    assert set(np.unique(out.splits["train"]["masks"])) == {0, 1} and out.splits["train"]["masks"].sum() == 2 * 10 * 10
    assert resize_staged(out, 20) is out  # already at the size: nothing to do


def test_memory_mapped_and_chunked_layouts_read_the_same_rows(tmp_path):
    """Files written by write_hdf5 are memory-mapped; chunked files from other tools go
    through h5py run reads. Both return the asked rows in the asked order, repeats included."""
    import h5py

    from hpclab.data import DatasetArrays, write_hdf5

    images = np.random.default_rng(0).integers(0, 256, (5000, 1, 4, 4), dtype=np.uint8)
    labels = np.arange(5000, dtype=np.int64)
    write_hdf5(
        tmp_path / "ours.h5",
        DatasetArrays(splits={"train": {"images": images, "labels": labels}}, class_names=[], inputs=[], source="test"),
    )
    with h5py.File(tmp_path / "chunked.h5", "w") as f:
        f.create_dataset("train/images", data=images, chunks=(256, 1, 4, 4))
        f.create_dataset("train/labels", data=labels, chunks=(256,), compression="gzip")
    ours, chunked = H5Split(tmp_path / "ours.h5", "train"), H5Split(tmp_path / "chunked.h5", "train")
    assert all(isinstance(a, torch.Tensor) for a in ours.arrays().values())  # memory-mapped
    assert not any(isinstance(a, torch.Tensor) for a in chunked.arrays().values())
    for rows in (np.array([7, 3, 3, 4999, 0]), np.arange(100, 200)[::-1], np.array([12])):
        for split in (ours, chunked):
            batch = split[rows]
            np.testing.assert_array_equal(batch["images"].numpy(), images[rows])
            np.testing.assert_array_equal(batch["labels"].numpy(), labels[rows])
            with h5py.File(split.path, "r", locking=False) as f:
                np.testing.assert_array_equal(read_rows(f["train/images"], rows), images[rows])
    assert torch.equal(ours[42]["images"], torch.from_numpy(images[42]))


def test_reader_under_a_dataloader_with_two_workers(fmnist_data):
    path = fmnist_data / "data" / "fashion_mnist.h5"
    split = H5Split(path, "train", indices=np.arange(0, 600, 2))
    sampler = EpochBatches(len(split), batch_size=64, shuffle=True, seed=3)
    loader = torch.utils.data.DataLoader(
        split, sampler=sampler, batch_size=None, num_workers=2, persistent_workers=True
    )
    reference = split.load()
    for epoch in range(2):
        sampler.set_epoch(epoch)
        seen = []
        for batch, idx in zip(loader, iter(sampler)):
            assert batch["images"].shape == (len(idx), 1, 28, 28)
            assert torch.equal(batch["images"], reference["images"][torch.from_numpy(idx)])
            seen.extend(idx.tolist())
        assert len(seen) == len(set(seen)) == 256  # 4 full batches of the 300 kept rows


def test_epoch_batches_are_sharded_and_resumable():
    full = EpochBatches(1000, 32, shuffle=True, seed=1)
    full.set_epoch(4)
    batches = list(full)
    resumed = EpochBatches(1000, 32, shuffle=True, seed=1)
    resumed.set_epoch(4, skip=10)
    assert [b.tolist() for b in resumed] == [b.tolist() for b in batches[10:]]
    shards = [EpochBatches(1000, 32, shuffle=True, seed=1, rank=r, world=2) for r in (0, 1)]
    for s in shards:
        s.set_epoch(0)
    a, b = (np.concatenate(list(s)) for s in shards)
    assert not set(a) & set(b) and len(shards[0]) == len(shards[1])


def test_val_split_is_fixed_and_label_fraction_and_class_subset(fmnist_data):
    base = ["experiment=ae_latent", "data.val_fraction=0.2"]
    d1 = RunData(compose(base), torch.device("cpu"))
    d2 = RunData(compose(base + ["seed=7", "data.train_fraction=0.5"]), torch.device("cpu"))
    assert np.array_equal(d1.indices["val"], d2.indices["val"])
    assert len(d1.indices["val"]) == 120 and len(d1.indices["train"]) == 480 and len(d2.indices["train"]) == 240
    assert not set(d1.indices["val"]) & set(d1.indices["train"])
    d3 = RunData(compose(base + ["data.classes=[Trouser,Bag]"]), torch.device("cpu"))
    assert d3.info.class_names == ["Trouser", "Bag"] and d3.info.num_classes == 2
    labels = torch.cat([b["labels"] for b in d3.batches("test", train=False).epoch(0)])
    assert set(labels.tolist()) <= {0, 1} and len(labels) > 0


@pytest.mark.parametrize("workers", [0, 2])  # streamed in the training process, or by DataLoader workers
def test_streamed_and_in_memory_batches_agree(fmnist_data, workers):
    cfgs = [
        compose(["experiment=ae_latent", f"data.in_memory={m}", f"data.num_workers={workers}"])
        for m in ("true", "false")
    ]
    batches = [list(RunData(c, torch.device("cpu")).batches("train", train=True).epoch(1)) for c in cfgs]
    assert len(batches[0]) == len(batches[1]) > 0
    for a, b in zip(*batches):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["labels"], b["labels"])


def test_every_registry_refuses_an_unknown_name_in_the_same_one_line_error(workdir):
    """Models, tasks, analyses, dataset sources and weight files share one registry mechanism:
    an unknown name is a ConfigError naming the kind, the name and the known names."""
    from hpclab.analysis import ANALYSES
    from hpclab.config import ConfigError
    from hpclab.data.sources import SOURCES
    from hpclab.models import MODELS
    from hpclab.tasks import TASKS
    from hpclab.weights import WEIGHTS

    for registry, kind, known in (
        (MODELS, "model", "conv_ae"),
        (TASKS, "task", "classify"),
        (ANALYSES, "analysis", "curves"),
        (SOURCES, "dataset", "mnist"),
        (WEIGHTS, "weights", "resnet18"),
    ):
        with pytest.raises(ConfigError, match=rf"^unknown {kind} 'nope' \(known: [^)]*\b{known}\b[^)]*\)$"):
            registry["nope"]
    proc = run_cli("prepare_data.py", "data=mnist", "data.name=nope", cwd=workdir, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: unknown dataset 'nope' (known: {', '.join(sorted(SOURCES))})"
    ]
    proc = run_cli("prepare_data.py", "weights=nope", cwd=workdir, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: unknown weights 'nope' (known: "
    )
    proc = run_cli("launch.py", "model.name=nope", "dry_run=true", cwd=workdir, check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith(
        "error: config key 'model.name': unknown model 'nope' (known: "
    )
