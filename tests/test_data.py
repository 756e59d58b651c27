"""kerastl.data: sources, corrupt files, label checks, splits, tf.data pipeline, augmentation."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from kerastl import data as kdata
from kerastl.errors import ConfigError, DataError


def _folder(root, classes=("cat", "dog"), n=6, size=(20, 24), seed=0):
    rng = np.random.default_rng(seed)
    for ci, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            img = (rng.random((*size, 3)) * 50 + ci * 100).astype("uint8")
            Image.fromarray(img).save(root / c / f"{i}.png")
    return root


def test_image_folder_skips_and_reports_corrupt_files(tmp_path):
    root = _folder(tmp_path / "imgs")
    (root / "dog" / "broken.jpg").write_bytes(b"not an image at all")
    (root / "cat" / "truncated.png").write_bytes((root / "cat" / "0.png").read_bytes()[:40])
    (root / "cat" / "notes.txt").write_text("ignored: not an image extension")
    ex = kdata.from_image_folder(root)
    assert ex.class_names == ["cat", "dog"]
    assert len(ex) == 12
    skipped = {p.split("/")[-1]: why for p, why in ex.skipped}
    assert set(skipped) == {"broken.jpg", "truncated.png"}
    assert all(why for why in skipped.values())
    assert ex.class_counts() == {"cat": 6, "dog": 6}


def test_a_dataset_root_of_split_folders_is_refused_with_the_paths_to_pass(tmp_path):
    """``root/train/<class>`` + ``root/val/<class>`` (timm, Ultralytics) is not a folder per
    class: read as one it trained a 'train' vs 'val' classifier. Two classes that happen to
    be called train and val (their images inside) still read as classes."""
    root = tmp_path / "ds"
    _folder(root / "train", n=3)
    _folder(root / "val", n=2)
    with pytest.raises(DataError) as info:
        kdata.from_image_folder(root)
    msg = str(info.value)
    assert "holds the splits ['train', 'val']" in msg, msg
    assert f"--data {root / 'train'} --val-data {root / 'val'}" in msg, msg
    assert kdata.from_image_folder(root / "train").class_names == ["cat", "dog"]
    flat = _folder(tmp_path / "flat", classes=("train", "val"), n=3)
    assert kdata.from_image_folder(flat).class_names == ["train", "val"]
    _folder(tmp_path / "t" / "train", n=2)  # no val split: only --data is named
    with pytest.raises(DataError, match=r"Pass data.path='[^']*train' \(kerastl train"):
        kdata.from_image_folder(tmp_path / "t")


def test_split_identity_follows_which_files_not_where_the_folder_is(tmp_path):
    import shutil

    a = kdata.from_image_folder(_folder(tmp_path / "a", n=5))
    shutil.copytree(tmp_path / "a", tmp_path / "moved")  # new paths and timestamps
    b = kdata.from_image_folder(tmp_path / "moved")
    assert a.fingerprint() != b.fingerprint()
    assert kdata.split_identity(*a.split(0.4, 0)) == kdata.split_identity(*b.split(0.4, 0))
    assert kdata.split_identity(*a.split(0.4, 0)) != kdata.split_identity(*a.split(0.4, 1))
    _folder(tmp_path / "moved", n=7)  # two more files per class: another split
    c = kdata.from_image_folder(tmp_path / "moved")
    assert kdata.split_identity(*a.split(0.4, 0)) != kdata.split_identity(*c.split(0.4, 0))


def test_held_out_data_may_lack_a_class_training_data_may_not(tmp_path):
    """Validation or evaluation data read with the model's classes: a class with no folder
    is not scored (its id kept); the same folder as training data is refused."""
    root = _folder(tmp_path / "ev", classes=("cat", "dog"), n=2)
    names = ["bird", "cat", "dog"]
    with pytest.raises(DataError, match=r"class_names: no sub-folder \['bird'\]"):
        kdata.load("folder", root, class_names=names)
    with kdata.held_out():
        ex = kdata.load("folder", root, class_names=names)
    assert ex.class_counts() == {"bird": 0, "cat": 2, "dog": 2} and sorted(set(ex.y)) == [1, 2]
    with pytest.raises(DataError, match=r"no sub-folder \['bird'\]"):
        kdata.load("folder", root, class_names=names)  # the scope ended


def test_empty_class_and_single_class_are_errors(tmp_path):
    root = _folder(tmp_path / "a", classes=("cat", "dog"), n=3)
    (root / "bird").mkdir()
    with pytest.raises(DataError, match=r"\['bird'\] have no usable example"):
        kdata.from_image_folder(root)
    only = _folder(tmp_path / "b", classes=("cat",), n=3)
    with pytest.raises(DataError, match=r"single class \['cat'\].*task='binary'"):
        kdata.from_image_folder(only)
    corrupt_only = _folder(tmp_path / "c", classes=("cat", "dog"), n=2)
    for p in (corrupt_only / "dog").iterdir():
        p.write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"\['dog'\] have no usable example.*unreadable"):
        kdata.from_image_folder(corrupt_only)


def test_labels_that_do_not_match_the_head(tmp_path):
    ex = kdata.from_numpy(np.zeros((6, 8, 8), "uint8"), [0, 1, 2, 0, 1, 2])
    with pytest.raises(DataError, match=r"3 classes.*head has 5 outputs.*num_classes=3"):
        kdata.check_head(ex, 5, "classification")
    with pytest.raises(DataError, match=r"differ from the data's"):
        kdata.check_head(ex, 3, "classification", ["a", "b", "c"])
    with pytest.raises(DataError, match=r"labels range 0..2 but there are 2 class_names"):
        kdata.from_numpy(np.zeros((3, 8, 8), "uint8"), [0, 1, 2], class_names=["a", "b"])
    kdata.check_head(ex, 3, "classification", ["0", "1", "2"])  # matches: no error


def test_csv_source_multilabel_and_regression(tmp_path):
    root = _folder(tmp_path / "imgs", n=3)
    rows = ["file,tags,score"]
    for i, p in enumerate(sorted((root / "cat").iterdir()) + sorted((root / "dog").iterdir())):
        tags = "cat|cute" if "cat" in str(p) else "dog"
        rows.append(f"{p.relative_to(tmp_path)},{tags},{i * 0.5}")
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    ml = kdata.from_csv(
        tmp_path / "labels.csv", task="multilabel", path_column="file", label_column="tags"
    )
    assert ml.class_names == ["cat", "cute", "dog"]
    assert ml.y.shape == (6, 3) and ml.y[0].tolist() == [1, 1, 0]
    reg = kdata.from_csv(
        tmp_path / "labels.csv", task="regression", path_column="file", label_column="score"
    )
    assert reg.y.shape == (6, 1) and reg.y[-1, 0] == pytest.approx(2.5)
    with pytest.raises(DataError, match=r"data.path_column.*'path'.*Did you mean|Valid choices"):
        kdata.from_csv(tmp_path / "labels.csv", path_column="path")


def test_a_csv_whose_paths_are_relative_to_another_folder_says_where_it_looked(tmp_path):
    root = _folder(tmp_path / "imgs", n=2)
    rows = ["file,label"] + [f"{c}/{i}.png,{c}" for c in ("cat", "dog") for i in range(2)]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")  # relative to imgs/
    with pytest.raises(DataError) as info:
        kdata.from_csv(tmp_path / "labels.csv", path_column="file")
    msg = str(info.value)
    assert "none of its 4 image paths could be read, e.g. " + str(tmp_path / "cat" / "0.png") in msg
    assert f"by default the CSV's folder: {str(tmp_path)!r}" in msg and "data.root" in msg, msg
    ex = kdata.from_csv(tmp_path / "labels.csv", path_column="file", root=root)
    assert ex.class_counts() == {"cat": 2, "dog": 2}


def test_text_csv_and_jsonl_give_string_label_datasets(tmp_path):
    (tmp_path / "t.csv").write_text('text,label\n"good, great",pos\nawful,neg\nfine,pos\n ,neg\n')
    lines = [{"text": "good", "label": "pos"}, {"text": "bad", "label": "neg"}]
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    for name in ("t.csv", "t.jsonl"):
        ex = kdata.load(path=tmp_path / name)
        assert ex.kind == "text" and ex.class_names == ["neg", "pos"]
        ds = kdata.make_dataset(ex, batch_size=8)
        x, y = next(iter(ds))
        assert x.dtype.name == "string" and y.dtype.name == "int32"
    ex = kdata.load(path=tmp_path / "t.csv")
    assert ex.x[0] == "good, great" and len(ex.skipped) == 1  # the blank text


def test_numpy_pipeline_resizes_grayscale_to_rgb_and_is_seeded():
    x = np.arange(10 * 8 * 8, dtype=np.int64).reshape(10, 8, 8) % 256
    ex = kdata.from_numpy(x.astype("uint8"), np.arange(10) % 2)
    ds = kdata.make_dataset(ex, image_size=16, batch_size=10, shuffle=True, seed=3)
    xb, yb = next(iter(ds))
    assert tuple(xb.shape) == (10, 16, 16, 3) and xb.dtype.name == "float32"
    assert float(xb.numpy().max()) <= 255.0
    ds2 = kdata.make_dataset(ex, image_size=16, batch_size=10, shuffle=True, seed=3)
    assert next(iter(ds2))[1].numpy().tolist() == yb.numpy().tolist()
    # reshuffled each epoch
    orders = [tuple(b[1].numpy().tolist()) for b in [next(iter(ds)) for _ in range(3)]]
    assert len(set(orders)) > 1


def test_split_is_stratified_seeded_and_folds_partition():
    ex = kdata.from_numpy(np.zeros((40, 8, 8), "uint8"), np.repeat([0, 1, 2, 3], 10))
    a_tr, a_va = ex.split(0.2, seed=1)
    b_tr, b_va = ex.split(0.2, seed=1)
    assert np.array_equal(a_va.y, b_va.y) and len(a_va) == 8
    assert sorted(a_va.class_counts().values()) == [2, 2, 2, 2]
    folds = ex.folds(4, seed=0)
    seen = np.concatenate([va for _, va in folds])
    assert sorted(seen.tolist()) == list(range(40))
    for tr, va in folds:
        assert not set(tr) & set(va)
        assert np.bincount(ex.y[va], minlength=4).tolist() == [2, 3, 2, 3] or len(va) == 10


def test_augmentation_runs_in_the_pipeline_only():
    ex = kdata.from_numpy(
        np.random.default_rng(0).integers(0, 255, (8, 16, 16, 3)).astype("uint8"), np.arange(8) % 2
    )
    plain = kdata.make_dataset(ex, batch_size=8)
    aug = kdata.make_dataset(ex, batch_size=8, augment="strong", seed=0)
    x0 = next(iter(plain))[0].numpy()
    a1 = next(iter(aug))[0].numpy()
    a2 = next(iter(aug))[0].numpy()
    assert not np.allclose(a1, x0) and not np.allclose(a1, a2)  # random, every epoch
    assert np.allclose(next(iter(plain))[0].numpy(), x0)
    assert kdata.augment_names("standard") == ["flip", "rotation", "zoom", "contrast"]
    with pytest.raises(ConfigError, match=r"augment='strnog'.*Did you mean 'strong'"):
        kdata.augment_names("strnog")


def test_infer_source(tmp_path):
    (tmp_path / "a.csv").write_text("path,label\nx.png,a\n")
    (tmp_path / "b.csv").write_text("text,label\nhi,a\n")
    assert kdata.infer_source(tmp_path / "a.csv") == "csv"
    assert kdata.infer_source(tmp_path / "b.csv") == "text"
    assert kdata.infer_source(tmp_path / "x.npz") == "numpy"
    assert kdata.infer_source(tmp_path) == "folder"


def _tiny_tfds(data_dir):
    import tensorflow_datasets as tfds

    class KerastlTinyShapes(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                features=tfds.features.FeaturesDict(
                    {
                        "image": tfds.features.Image(shape=(12, 12, 3)),
                        "label": tfds.features.ClassLabel(names=["dark", "light"]),
                    }
                ),
                supervised_keys=("image", "label"),
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(16), "test": self._generate_examples(6)}

        def _generate_examples(self, n):
            for i in range(n):
                img = np.full((12, 12, 3), 30 if i % 2 == 0 else 220, dtype=np.uint8)
                yield i, {"image": img, "label": i % 2}

    KerastlTinyShapes(data_dir=str(data_dir)).download_and_prepare()
    return "kerastl_tiny_shapes"


def test_tfds_source_offline(tmp_path):
    name = _tiny_tfds(tmp_path)
    ex = kdata.from_tfds(name, data_dir=tmp_path, split="train")
    assert ex.kind == "tfds" and ex.class_names == ["dark", "light"] and len(ex) == 16
    tr, va = ex.split(0.25, seed=0)
    xb, yb = next(iter(kdata.make_dataset(va, image_size=16, batch_size=32)))
    assert tuple(xb.shape) == (4, 16, 16, 3)
    # labels travel with their images through the index filter
    means = xb.numpy().mean(axis=(1, 2, 3))
    assert ((means > 128).astype(int) == yb.numpy()).all()
    with pytest.raises(DataError, match=r"kerastl does not download") as info:
        kdata.from_tfds("kerastl_no_such_dataset", data_dir=tmp_path)
    # the keys a user sets (data.name, data.data_dir), not a 'data.tfds' there is not
    assert str(info.value).startswith("data.name: cannot open TFDS dataset")
    assert f"in data.data_dir {str(tmp_path)!r}" in str(info.value)


def _smooth_images(n=3, h=40, w=48, seed=0):
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    return tf.image.resize(rng.uniform(0, 255, (n, 10, 12, 3)).astype("float32"), (h, w)).numpy()


@pytest.mark.parametrize(
    "fused, keras_layer",
    [
        ({"rotation": (0.1, 0.1)}, ("RandomRotation", {"factor": (0.1, 0.1)})),
        ({"zoom": (0.3, 0.3)}, ("RandomZoom", {"height_factor": (0.3, 0.3)})),
        ({"zoom": (-0.3, -0.3)}, ("RandomZoom", {"height_factor": (-0.3, -0.3)})),
        (
            {"translation": ((0.1, 0.1), (-0.2, -0.2))},
            ("RandomTranslation", {"height_factor": (0.1, 0.1), "width_factor": (-0.2, -0.2)}),
        ),
    ],
)
def test_random_affine_matches_each_keras_layer(fused, keras_layer):
    """Fixed-parameter ranges: the fused layer computes what the Keras layer computes."""
    import keras

    from kerastl.core.layers import RandomAffine

    x = _smooth_images()
    ours = np.asarray(RandomAffine(seed=1, **fused)(x, training=True))
    cls, kwargs = keras_layer
    theirs = np.asarray(getattr(keras.layers, cls)(seed=1, **kwargs)(x, training=True))
    np.testing.assert_allclose(ours, theirs, atol=1e-3)
    assert not np.allclose(ours, x)


def test_geometric_blocks_are_fused_into_one_resampling():
    import keras

    from kerastl.core.layers import RandomAffine

    aug = kdata.build_augmenter("standard", seed=0)
    kinds = [type(layer).__name__ for layer in aug.layers]
    assert kinds == ["RandomAffine", "RandomContrast"]
    affine = aug.layers[0]
    assert affine.factor == (-0.08, 0.08) and affine.zoom == (-0.15, 0.15)
    assert affine.horizontal_flip
    assert [type(la).__name__ for la in kdata.build_augmenter("light").layers] == ["RandomFlip"]
    assert [type(la).__name__ for la in kdata.build_augmenter(["rotation"]).layers] == [
        "RandomRotation"
    ]
    plain = kdata.build_augmenter("standard", seed=0, fuse=False)
    assert [type(la).__name__ for la in plain.layers] == [
        "RandomFlip",
        "RandomRotation",
        "RandomZoom",
        "RandomContrast",
    ]
    # Rotation and isotropic zoom about the centre commute: the fused layer equals the
    # two Keras layers in sequence up to the second interpolation of the latter.
    x = _smooth_images(seed=2)
    seq = keras.Sequential(
        [keras.layers.RandomRotation((0.05, 0.05)), keras.layers.RandomZoom((0.2, 0.2))]
    )
    one = RandomAffine(rotation=(0.05, 0.05), zoom=(0.2, 0.2))
    diff = np.abs(np.asarray(seq(x, training=True)) - np.asarray(one(x, training=True)))
    assert diff[:, 8:-8, 8:-8].mean() < 3.0  # 0-255 scale; a wrong matrix gives tens
    np.testing.assert_array_equal(np.asarray(one(x, training=False)), x)
    again = RandomAffine.from_config(one.get_config())
    assert again.zoom == one.zoom and again.factor == one.factor


def test_large_jpegs_decode_at_reduced_scale_with_the_same_result(tmp_path):
    """JPEGs 2x-8x the target decode through libjpeg's scaled IDCT; the image barely moves."""
    import tensorflow as tf
    from PIL import Image

    from kerastl.data import _pipeline as P
    from kerastl.data import images as I

    rng = np.random.default_rng(0)
    smooth = tf.image.resize(rng.uniform(0, 255, (1, 12, 16, 3)), (360, 480)).numpy()[0]
    Image.fromarray(smooth.astype("uint8")).save(tmp_path / "big.jpg", quality=92)
    Image.fromarray(smooth.astype("uint8")).save(tmp_path / "big.png")
    data = tf.io.read_file(str(tmp_path / "big.jpg"))
    assert I._decode_jpeg_reduced(data, (40, 40), 3).shape == (45, 60, 3)  # 1/8 scale
    assert I._decode_jpeg_reduced(data, (100, 100), 3).shape == (180, 240, 3)  # 1/2 scale
    assert I._decode_jpeg_reduced(data, (200, 200), 3).shape == (360, 480, 3)  # full
    for name in ("big.jpg", "big.png"):
        path = str(tmp_path / name)
        ours = P._decode_file(tf.constant(path), (96, 96), 3).numpy().astype(int)
        full = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        ref = I.resize_uint8(full, (96, 96)).numpy().astype(int)
        assert ours.shape == (96, 96, 3)
        assert np.abs(ours - ref).mean() < 1.5 and np.abs(ours - ref).max() <= 16, name


def test_random_affine_flip_mirrors_about_half_the_images_exactly():
    from kerastl.core.layers import RandomAffine

    x = np.random.default_rng(0).uniform(0, 255, (32, 20, 24, 3)).astype("float32")
    y = np.asarray(RandomAffine(horizontal_flip=True, seed=3)(x, training=True))
    kept = [np.allclose(y[i], x[i], atol=1e-3) for i in range(32)]
    flipped = [np.allclose(y[i], x[i, :, ::-1], atol=1e-3) for i in range(32)]
    assert all(k != f for k, f in zip(kept, flipped))  # each image is one or the other
    assert 6 <= sum(flipped) <= 26


def test_array_fingerprint_is_computed_once_and_sees_edits():
    from kerastl.data import from_numpy

    x = np.random.default_rng(0).integers(0, 255, (20, 8, 8, 3), dtype=np.uint8)
    ex = from_numpy(x, [0, 1] * 10)
    calls = []
    original = type(ex)._fingerprint

    def counted(self):
        calls.append(1)
        return original(self)

    type(ex)._fingerprint = counted
    try:
        first = ex.fingerprint()
        assert ex.fingerprint() == first and len(calls) == 1  # memoised
        x[0, 0, 0, 0] ^= 1  # an in-place edit of a sampled value
        assert ex.fingerprint() != first and len(calls) == 2
        x[0, 0, 0, 0] ^= 1
        assert ex.fingerprint() == first  # same content, same hash
        other = from_numpy(x.copy(), [0, 1] * 10)
        assert other.fingerprint() == first  # content, not identity
    finally:
        type(ex)._fingerprint = original


def test_checking_a_large_image_folder_shows_a_progress_bar_unless_quiet(
    tmp_path, capsys, monkeypatch
):
    """500+ files: a tqdm bar on stderr (a terminal) while verifying; none when the kerastl
    logger is quiet, nor in a redirected log."""
    import logging
    import sys

    from PIL import Image

    from kerastl import data

    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / c).mkdir()
        for i in range(260):
            pixels = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(tmp_path / c / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "a" / "g.gif")
    log = logging.getLogger("kerastl")
    old = log.level
    try:
        log.setLevel(logging.INFO)
        data.from_image_folder(tmp_path)
        assert "checking images" not in capsys.readouterr().err  # redirected
        monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
        ex = data.from_image_folder(tmp_path, channels=1)  # a GIF for a grey model is readable
        assert len(ex) == 521 and not ex.skipped
        assert "checking images" in capsys.readouterr().err
        log.setLevel(logging.WARNING)
        data.from_image_folder(tmp_path)
        assert "checking images" not in capsys.readouterr().err
    finally:
        log.setLevel(old)


def test_validation_data_folder_labels_nested_images_by_their_class_folder(tmp_path, caplog):
    """An image deep inside a class folder (val/dog/nested/deeper/1.png) is a dog, for
    export's validation data as for training; a file directly in the folder has no class."""
    from kerastl.data.files import load_data_path

    for rel in ("cat/0.png", "dog/0.png", "dog/nested/deeper/1.png"):
        (tmp_path / "val" / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / "val" / rel)
    paths, labels = load_data_path(tmp_path / "val", "validation_data", ["dog", "cat"])
    assert labels.tolist() == [1, 0, 0]
    trained = kdata.from_image_folder(tmp_path / "val", class_names=["dog", "cat"], verify=False)
    assert dict(zip(trained.x, trained.y)) == dict(zip(paths, labels))
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "loose.png")
    with caplog.at_level("WARNING", logger="kerastl"):
        assert len(load_data_path(tmp_path / "val", "validation_data", ["dog", "cat"])) == 4
    assert "1 file(s) lie directly in it, in no class sub-folder" in caplog.text


def test_validation_and_calibration_data_by_path(tmp_path):
    """kerastl.export's ``validation_data``/``calibration_data`` given as a path: an image
    folder (labels from class subfolders that name the model's classes), .npy or .npz."""
    from kerastl.data.files import load_data_path

    for cls in ("cat", "dog"):
        (tmp_path / "val" / cls).mkdir(parents=True)
        for i in range(2):
            Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(tmp_path / "val" / cls / f"{i}.PNG")
    paths, labels = load_data_path(tmp_path / "val", "validation_data", ["dog", "cat"])
    assert [p.split("/")[-2] for p in paths] == ["cat", "cat", "dog", "dog"]
    assert labels.tolist() == [1, 1, 0, 0]  # indices into the model's class names
    # Subfolders that are not the model's classes give unlabelled inputs.
    unlabelled = load_data_path(tmp_path / "val", "calibration_data", ["a", "b"])
    assert unlabelled == paths
    assert load_data_path(None, "validation_data", None) is None

    x = np.arange(24, dtype="float32").reshape(2, 3, 4)
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_array_equal(load_data_path(tmp_path / "x.npy", "v", None), x)
    np.savez(tmp_path / "xy.npz", y=np.array([1, 0]), x=x)
    got_x, got_y = load_data_path(tmp_path / "xy.npz", "v", None)
    np.testing.assert_array_equal(got_x, x)
    assert got_y.tolist() == [1, 0]
    np.savez(tmp_path / "any.npz", images=x)  # no "x" key: the first array, no labels
    np.testing.assert_array_equal(load_data_path(tmp_path / "any.npz", "v", None), x)

    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"calibration_data: no images \(.*\.png.*'"):
        load_data_path(tmp_path / "empty", "calibration_data", None)
    for bad in (tmp_path / "missing.npy", tmp_path / "data.csv"):
        with pytest.raises(DataError, match=r"validation_data: expected an image folder"):
            load_data_path(bad, "validation_data", None)


def test_text_validation_data_keeps_texts_and_labels_of_the_same_rows(tmp_path):
    """A JSONL text 0 or false is a text to read_texts but was dropped from the labels'
    rows (``r.get("text") or ""``): 3 texts and 1 label. One row filter gives both. (A JSON
    number or boolean is now refused as no string: the texts "0" and "false" stand in.)"""
    from kerastl.data.files import load_data_path, read_texts

    rows = [
        {"text": "0", "label": "neg"},
        {"text": "false", "label": "pos"},
        {"text": "", "label": "neg"},
        {"text": None, "label": "neg"},
        {"text": "a good film", "label": "pos"},
    ]
    path = tmp_path / "v.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    texts, labels = load_data_path(path, "validation_data", ["neg", "pos"])
    assert texts.tolist() == ["0", "false", "a good film"]
    assert labels.tolist() == [0, 1, 1]
    assert [t for _, t in read_texts(path, "inputs")] == texts.tolist()
    assert [w.rsplit(":", 1)[1] for w, _ in read_texts(path, "inputs")] == ["1", "2", "5"]


def test_a_text_csv_without_a_text_column_gets_a_text_error(tmp_path):
    """``sentence,label`` is text, not a CSV of image paths: the error names data.text_column,
    the column it expected, the columns found and how to choose one."""
    (tmp_path / "t.csv").write_text("sentence,label\ngood film,pos\nbad film,neg\n")
    assert kdata.infer_source(tmp_path / "t.csv") == "text"
    assert kdata.infer_source(tmp_path / "t.csv", text_column="sentence") == "text"
    expected = (
        r"data.text_column: .*t\.csv' has no column 'text' .*\['sentence', 'label'\].*"
        r"data.text_column=sentence.*text_column='sentence'"
    )
    for source in (None, "text"):
        with pytest.raises(DataError, match=expected):
            kdata.load(source, tmp_path / "t.csv")
    ex = kdata.load(path=tmp_path / "t.csv", text_column="sentence")
    assert ex.kind == "text" and ex.x.tolist() == ["good film", "bad film"]
    # image CSVs are still read as such: by their path column, or their image file names
    (tmp_path / "files.csv").write_text("file,label\ncat/1.jpg,cat\n")
    assert kdata.infer_source(tmp_path / "files.csv") == "csv"
    assert kdata.infer_source(tmp_path / "files.csv", path_column="file") == "csv"


def test_predict_and_export_read_npy_files_with_one_reader(tmp_path):
    """``kerastl predict``'s inputs and ``kerastl export``'s data: kerastl.data.files.read_arrays,
    the same messages (naming the argument, the file and why) on both paths."""
    from kerastl.cli.export import _read_npy
    from kerastl.data.files import load_data_path

    np.save(tmp_path / "obj.npy", np.array(["a.png"], dtype=object), allow_pickle=True)
    (tmp_path / "torn.npy").write_bytes(b"[1,2")
    for name in ("obj.npy", "torn.npy"):
        path = str(tmp_path / name)
        with pytest.raises(DataError) as predict_error:
            _read_npy(path)
        with pytest.raises(DataError) as export_error:
            load_data_path(path, "inputs", None)
        assert str(predict_error.value) == str(export_error.value)
        assert re.match(
            rf"inputs: cannot read '{re.escape(path)}' without pickle: it is not a \.npy array "
            r"of raw inputs",
            str(predict_error.value),
        )
    with pytest.raises(DataError, match=r"^inputs: no file at '.*missing\.npy'\.$"):
        _read_npy(str(tmp_path / "missing.npy"))
    x = np.arange(6, dtype="uint8").reshape(1, 2, 3)
    np.save(tmp_path / "x.npy", x)
    np.testing.assert_array_equal(_read_npy(str(tmp_path / "x.npy")), x)
    np.savez(tmp_path / "z.npz", x=x)
    (tmp_path / "z.npz").rename(tmp_path / "z.npy")  # an archive under a .npy name
    with pytest.raises(DataError, match=r"inputs: .*z\.npy' holds a \.npz archive \(\['x'\]\)"):
        _read_npy(str(tmp_path / "z.npy"))
    from kerastl.data.files import read_arrays

    assert read_arrays(tmp_path / "z.npy", "inputs")["x"].shape == (1, 2, 3)


def test_predict_reads_a_grayscale_npy_as_it_reads_grey_image_files(tmp_path, capsys):
    """(N, H, W) and (N, H, W, 1) arrays are repeated to RGB, as grey files are decoded; a
    shape that does not fit is refused with the shape received and the shapes accepted."""
    import keras

    from kerastl.cli import main

    inp = keras.Input((16, 16, 3))
    feats = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inp))
    keras.Model(inp, keras.layers.Dense(3)(feats)).save(tmp_path / "m.keras")
    grey = np.random.default_rng(0).integers(0, 255, (2, 16, 16)).astype("uint8")
    for i, img in enumerate(grey):
        Image.fromarray(img).save(tmp_path / f"{i}.png")
    np.save(tmp_path / "grey.npy", grey)
    np.save(tmp_path / "grey1.npy", grey[..., None])

    def rows(*inputs):
        assert main(["predict", str(tmp_path / "m.keras"), *map(str, inputs), "--json"]) == 0
        out = capsys.readouterr().out.splitlines()
        return [json.loads(ln) for ln in out if ln.startswith("{")]

    files = rows(tmp_path / "0.png", tmp_path / "1.png")
    for name in ("grey.npy", "grey1.npy"):
        got = rows(tmp_path / name)
        assert [r["input"] for r in got] == [f"{tmp_path / name}[{i}]" for i in range(2)]
        for a, b in zip(got, files):
            assert a.keys() == b.keys()
            for key in a.keys() - {"input"}:
                np.testing.assert_allclose(a[key], b[key], rtol=1e-5, atol=1e-5)
    np.save(tmp_path / "big.npy", np.zeros((2, 32, 32), "uint8"))
    assert main(["predict", str(tmp_path / "m.keras"), str(tmp_path / "big.npy")]) == 2
    err = capsys.readouterr().err
    assert (
        "inputs: " + repr(str(tmp_path / "big.npy")) + " holds an array of shape (2, 32, 32)" in err
    )
    assert "Accepted shapes: (N, 16, 16, 3), (N, 16, 16, 1) or (N, 16, 16) (grayscale" in err
    from kerastl.data.files import fit_image_array

    rgb = np.arange(2 * 3, dtype="float32").reshape(1, 1, 2, 3)
    assert fit_image_array(rgb, (None, None, 1), "x", "x").shape == (1, 1, 2, 1)
    assert fit_image_array(rgb[0], (1, 2, 3), "x", "x").shape == (1, 1, 2, 3)  # one image


def test_a_csv_saved_by_excel_and_a_tsv_are_read_by_their_columns(tmp_path):
    """Excel's "CSV UTF-8" starts with a byte order mark, which made the first column
    '\\ufefftext' (no column 'text'); a .tsv file was split on commas (one column)."""
    (tmp_path / "bom.csv").write_bytes("text,label\na,x\nb,y\n".encode("utf-8-sig"))
    (tmp_path / "t.tsv").write_text("text\tlabel\na, b\tx\nc\ty\n")
    (tmp_path / "img.tsv").write_text("path\tlabel\ncat/1.jpg\tcat\ndog/1.jpg\tdog\n")
    for name, texts in (("bom.csv", ["a", "b"]), ("t.tsv", ["a, b", "c"])):
        assert kdata.infer_source(tmp_path / name) == "text"
        ex = kdata.load(path=tmp_path / name)
        assert ex.x.tolist() == texts and ex.class_names == ["x", "y"]
    assert kdata.infer_source(tmp_path / "img.tsv") == "csv"
    ex = kdata.from_csv(tmp_path / "img.tsv", verify=False)
    assert ex.x.tolist() == [str(tmp_path / "cat" / "1.jpg"), str(tmp_path / "dog" / "1.jpg")]
    assert ex.class_names == ["cat", "dog"]


def test_a_skipped_text_row_is_named_by_its_line_in_the_file(tmp_path, caplog):
    """An empty text was reported as 'news.csv:8' for line 9 (the header is line 1), as an
    'unreadable file'. Lines count as an editor counts them: a quoted text may span lines."""
    import logging

    from kerastl.train.context import report_skipped

    (tmp_path / "t.csv").write_bytes(b'text,label\r\n"two\r\nlines",a\r\n\r\n,b\r\nok,b\r\n')
    ex = kdata.load(path=tmp_path / "t.csv")
    assert ex.skipped == [(f"{tmp_path / 't.csv'}:5", "empty text")]
    (tmp_path / "t.jsonl").write_text(
        '{"text": "a", "label": "x"}\n\n{"text": " ", "label": "y"}\n{"text": "b", "label": "y"}\n'
    )
    assert kdata.load(path=tmp_path / "t.jsonl").skipped == [
        (f"{tmp_path / 't.jsonl'}:3", "empty text")
    ]
    with caplog.at_level(logging.WARNING, logger="kerastl"):
        report_skipped(ex, None)
    assert "skipped 1 example(s):" in caplog.text and "unreadable" not in caplog.text
    assert "t.csv:5: empty text" in caplog.text


def test_a_row_with_an_empty_label_is_skipped_and_reported_not_a_class(tmp_path):
    """A CSV row with an empty label became a class named ''; it is skipped and reported as
    an empty text is (file:line), in text and image-path CSVs and in JSONL; an empty
    multilabel cell stays an example of no class."""
    (tmp_path / "t.csv").write_text("text,label\na,x\nb,\nc,y\nd,x\n")
    ex = kdata.load(path=tmp_path / "t.csv")
    assert ex.class_names == ["x", "y"] and ex.x.tolist() == ["a", "c", "d"]
    assert ex.skipped == [(f"{tmp_path / 't.csv'}:3", "empty label")]
    rows = [{"text": "a", "label": "x"}, {"text": "b", "label": None}, {"text": "c"}]
    rows.append({"text": "d", "label": "y"})
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    ex = kdata.load(path=tmp_path / "t.jsonl")
    assert ex.class_names == ["x", "y"] and [s for s, _ in ex.skipped] == [
        f"{tmp_path / 't.jsonl'}:2",
        f"{tmp_path / 't.jsonl'}:3",
    ]
    (tmp_path / "img.csv").write_text("path,label\n1.jpg,cat\n2.jpg, \n3.jpg,dog\n")
    ex = kdata.from_csv(tmp_path / "img.csv", verify=False)
    assert ex.class_names == ["cat", "dog"] and len(ex) == 2
    assert ex.skipped == [(f"{tmp_path / 'img.csv'}:3", "empty label")]
    (tmp_path / "ml.csv").write_text("text,label\na,x|y\nb,\nc,y\n")
    ex = kdata.load(path=tmp_path / "ml.csv", task="multilabel")
    assert len(ex) == 3 and ex.y[1].tolist() == [0.0, 0.0] and not ex.skipped


def test_a_folder_of_class_subfolders_of_txt_files_is_text_data(tmp_path):
    """A folder of class sub-folders of .txt files (keras.utils.text_dataset_from_directory's
    layout) got "image folder ...: no usable examples"; it is read as text, one file one
    example, whether the source is guessed or data.source is text."""
    root = tmp_path / "news"
    for c, texts in (("finance", ["Banks cut rates", "Shares fell", ""]), ("sport", ["A goal"])):
        (root / c).mkdir(parents=True)
        for i, t in enumerate(texts):
            (root / c / f"{i}.txt").write_text(t + "\n")
    (root / "sport" / "notes.md").write_text("not read")
    (root / "sport" / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert kdata.infer_source(root) == "text"
    for source in (None, "text"):
        ex = kdata.load(source, root)
        assert ex.kind == "text" and ex.class_names == ["finance", "sport"]
        assert ex.x.tolist() == ["Banks cut rates\n", "Shares fell\n", "A goal\n"]
        assert ex.y.tolist() == [0, 0, 1]
        assert sorted((p.split("/")[-1], why) for p, why in ex.skipped) == [
            ("2.txt", "empty text"),
            ("latin1.txt", "not UTF-8 text"),
        ]
    Image.new("RGB", (8, 8)).save(root / "sport" / "photo.png")  # any image: an image folder
    assert kdata.infer_source(root) == "folder"
    with pytest.raises(DataError, match=r"has no sub-folders; expected one sub-folder of \.txt"):
        kdata.from_text_folder(root / "sport")


def test_export_data_of_a_text_model_is_read_from_text_files(tmp_path):
    """`kerastl export --calibration-data news.csv` on a text model said 'expected an image
    folder, .npy or .npz'; text files give texts, and a 'label' column labels."""
    from kerastl.data.files import load_data_path

    (tmp_path / "n.csv").write_text("text,label\nA goal,sport\n,finance\nRates rose,finance\n")
    (tmp_path / "s.txt").write_text("one\n\ntwo\n")
    x, y = load_data_path(tmp_path / "n.csv", "--validation-data", ["finance", "sport"])
    assert x.tolist() == ["A goal", "Rates rose"] and y.tolist() == [1, 0]
    x = load_data_path(tmp_path / "n.csv", "--calibration-data", None)
    assert x.tolist() == ["A goal", "Rates rose"]
    assert load_data_path(tmp_path / "s.txt", "v", ["a", "b"]).tolist() == ["one", "two"]
    with pytest.raises(DataError, match=r"v: expected an image folder.*\.txt/\.csv"):
        load_data_path(tmp_path / "x.parquet", "v", None)


def test_a_jsonl_text_that_is_not_a_string_is_refused_as_kerastl_predict_refuses_it(tmp_path):
    """Training read {"text": 5} as "5" and a list as "['x', 'y']" while kerastl predict
    refused the same file: now both refuse it, naming the line and the value."""
    from kerastl.data import from_text

    path = tmp_path / "mixed.jsonl"
    rows = [
        {"text": "a fine day", "label": "sun"},
        {"text": "rain again", "label": "rain"},
        {"text": 5, "label": "sun"},
        {"text": ["x", "y"], "label": "rain"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(DataError) as info:
        from_text(path)
    said = str(info.value)
    assert said.startswith(f"data.path: {path}:3: the 'text' value is a number, 5, not a string")
    assert f"(also {path}:4)" in said
    path.write_text("\n".join(json.dumps(r) for r in rows[:2]) + "\n")
    assert list(from_text(path).x) == ["a fine day", "rain again"]


def test_a_cache_file_holds_one_datasets_decoding_and_its_folder_is_made(tmp_path):
    """data.cache: <file> read an old cache of other data back as complete (a run trained on
    the previous dataset's 27 images, exit 0), and a missing folder failed mid-training."""
    from kerastl.data import from_numpy, make_dataset

    def first_pixels(ex, size):
        ds = make_dataset(ex, image_size=size, batch_size=64, shuffle=False, cache=path)
        return np.concatenate([x.numpy()[:, 0, 0, 0] for x, _ in ds])

    path = str(tmp_path / "not" / "yet" / "cache")
    zeros = from_numpy(np.zeros((6, 8, 8, 3), "uint8"), [0, 1] * 3)
    ones = from_numpy(np.full((9, 8, 8, 3), 200, "uint8"), [0, 1, 2] * 3)
    assert first_pixels(zeros, 8).tolist() == [0.0] * 6
    assert first_pixels(ones, 8).tolist() == [200.0] * 9  # not the 6 cached zeros
    assert first_pixels(zeros, 8).tolist() == [0.0] * 6  # its own cache, read back
    assert len(first_pixels(ones, 4)) == 9  # another size: another file


def test_a_multilabel_csv_with_one_column_per_class(tmp_path):
    """label_column [is_zero, is_even] read the first column only: its 0/1 values became
    two classes named '0' and '1', and is_even was dropped (exit 0)."""
    from kerastl.data import from_csv

    csv = tmp_path / "labels.csv"
    csv.write_text("path,is_zero,is_even\na.png,1,1\nb.png,0,1\nc.png,0,0\nd.png,,yes\n")
    ex = from_csv(csv, task="multilabel", label_column=["is_zero", "is_even"], verify=False)
    assert ex.class_names == ["is_zero", "is_even"]
    assert ex.y.tolist() == [[1, 1], [0, 1], [0, 0], [0, 1]]
    flipped = from_csv(csv, task="multilabel", label_column=["is_zero", "is_even"],
                       class_names=["is_even", "is_zero"], verify=False)  # fmt: skip
    assert flipped.y.tolist() == [[1, 1], [1, 0], [0, 0], [1, 0]]
    with pytest.raises(DataError, match=r"several columns are for task 'multilabel'"):
        from_csv(csv, task="classification", label_column=["is_zero", "is_even"], verify=False)
    csv.write_text("path,is_zero,is_even\na.png,1,maybe\n")
    with pytest.raises(DataError, match=r"column 'is_even' of example 0 holds 'maybe'"):
        from_csv(csv, task="multilabel", label_column=["is_zero", "is_even"], verify=False)


def test_a_npy_file_as_training_data_says_to_save_an_npz(tmp_path):
    """`--data images.npy` said only "is not a folder"."""
    from kerastl.data import from_image_folder

    np.save(tmp_path / "images.npy", np.zeros((2, 4, 4, 3), "uint8"))
    with pytest.raises(
        DataError, match=r"is not a folder\. A \.npy file holds one array and no labels"
    ):
        from_image_folder(tmp_path / "images.npy")


def test_a_csv_with_an_unterminated_quote_names_its_line(tmp_path):
    """An unterminated quote swallowed the rest of the file into one value; the error said
    only that no row had a text and a label."""
    from kerastl.data import from_text

    rows = [f"sentence {i},{'a' if i % 2 else 'b'}" for i in range(40)]
    rows[5] = '"an open quote,a'
    path = tmp_path / "t.csv"
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(DataError, match=r"t\.csv:7: a quoted value there runs over the"):
        from_text(path)
    rows[5] = '"a closed, quoted text",a'
    path.write_text("text,label\n" + "\n".join(rows) + "\n")
    assert len(from_text(path)) == 40
