"""Measure a keras.applications model: the facts of its registry entry.

:func:`introspect` builds a constructor with ``weights=None, include_top=False``
at 224 px and returns its record: pooled feature dim, parameter count, minimum
input, multi-scale taps (last stably-named layer at each stride) and the layer
groups (stem, then one stage per stride) anchored on stably-named layers.
``keras_apps.py`` beside it adds the hand facts; the registry tests re-check
every declared fact against freshly built models.
"""

import re

import keras


def auto_named(layer) -> bool:
    """True when Keras generated the name (it changes with the session counter)."""
    from keras.src.utils.naming import to_snake_case

    snake = to_snake_case(type(layer).__name__)
    return re.fullmatch(rf"{snake}(_\d+)?", layer.name) is not None or layer.name.startswith(
        "input_layer"
    )


def block_prefix(a: str, b: str) -> str:
    pa, pb, common = a.split("_"), b.split("_"), []
    for x, y in zip(pa, pb):
        if x != y:
            break
        common.append(x)
    for i, tok in enumerate(common):
        if re.search(r"\d", tok):
            return "_".join(common[: i + 1])
    return ""


def introspect(name: str, size: int = 224) -> dict:
    """Build ``keras.applications.<name>`` with random weights and measure its facts."""
    ctor = getattr(keras.applications, name)
    m = ctor(weights=None, include_top=False, input_shape=(size, size, 3))
    layers = m.layers
    stride_of = {}
    for layer in layers:
        shp = layer.output.shape
        if len(shp) == 4 and shp[1] and type(layer).__name__ != "ZeroPadding2D":
            s = size / shp[1]
            stride_of[layer.name] = min((1, 2, 4, 8, 16, 32), key=lambda t: abs(t - s))
    order = [layer.name for layer in layers]
    stable = {layer.name for layer in layers if not auto_named(layer)}
    chans = {layer.name: int(layer.output.shape[-1]) for layer in layers}
    chans["@output"] = int(m.output.shape[-1])
    tap_recs = [(n, chans[n], s) for n, s in _taps(order, stride_of, stable)]
    rec = dict(
        name=name,
        feature_dim=int(m.output.shape[-1]),
        params=int(m.count_params()),
        taps=tap_recs,
        groups=_groups(order, stride_of, stable, tap_recs),
        min_size=_min_size(ctor),
    )
    del m
    keras.backend.clear_session()
    return rec


def _taps(order: list, stride_of: dict, stable: set) -> list:
    """(layer, stride): the last stably-named layer at each stride, outside a split block."""
    taps = []
    for s in (2, 4, 8, 16, 32):
        cands = [n for n in order if stride_of.get(n) == s]
        if not cands:
            continue
        last = cands[-1]
        if s == 32 and last == order[-1]:
            taps.append(("@output" if last not in stable else last, s))
            continue
        idx = order.index(last)
        nxt = order[idx + 1] if idx + 1 < len(order) else ""
        prefix = block_prefix(last, nxt)
        pick = [n for n in cands if n in stable and not (prefix and n.startswith(prefix))]
        if pick:
            taps.append((pick[-1], s))
    return taps


def _groups(order: list, stride_of: dict, stable: set, tap_recs: list) -> list:
    """Stem = up to the last stable stride-2 layer (or the first tap), then one stage per
    tap of stride >= 4, then ``top`` when layers follow the last tap."""
    stem2 = [n for n in order if stride_of.get(n) == 2 and n in stable]
    stage_taps = [t for t in tap_recs if t[2] >= 4]
    if stem2:
        stem = stem2[-1]
    else:
        first4 = [n for n in order if stride_of.get(n) == 4 and n in stable]
        stem = first4[0] if first4 else stage_taps.pop(0)[0]
    groups = [("stem", stem)]
    for t in stage_taps:
        if order.index(t[0]) if t[0] != "@output" else len(order) > order.index(stem):
            groups.append((f"stage{len(groups)}", t[0]))
    if groups[-1][1] not in ("@output", order[-1]):
        groups.append(("top", "@output"))
    return groups


def _min_size(ctor) -> int | None:
    """The smallest square side, among the usual ones, the constructor accepts."""
    for s in (32, 64, 71, 75, 96, 128):
        try:
            ctor(weights=None, include_top=False, input_shape=(s, s, 3))
            return s
        except Exception:  # noqa: BLE001, PERF203
            pass
    return None
