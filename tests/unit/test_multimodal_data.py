"""The coloured-shapes dataset: determinism, held-out combinations, captions, questions, metrics, image files."""

from __future__ import annotations

import numpy as np
import pytest

from llmcore.errors import DataError
from llmcore.multimodal import (
    COLOURS,
    HELD_OUT,
    POSITIONS,
    QA,
    ShapeObject,
    all_questions,
    attribute_accuracy,
    caption_exact_match,
    caption_of,
    draw_scene,
    load_features,
    load_image,
    majority_answers,
    majority_predictions,
    make_shapes_dataset,
    parse_caption,
    qa_accuracy,
    split_of,
)
from llmcore.multimodal.shapes import questions_for


@pytest.fixture(scope="module")
def train():
    return make_shapes_dataset(600, "train", seed=0)


@pytest.fixture(scope="module")
def test_split():
    return make_shapes_dataset(300, "test", seed=0)


# ------------------------------------------------------------------------------------------ determinism
def test_same_seed_same_examples_other_seed_or_split_differs():
    a, b = make_shapes_dataset(50, "train", seed=3), make_shapes_dataset(50, "train", seed=3)
    assert [x.caption for x in a] == [x.caption for x in b]
    assert all(np.array_equal(x.image, y.image) for x, y in zip(a, b))
    assert [x.qa for x in a] == [x.qa for x in b]
    other = make_shapes_dataset(50, "train", seed=4)
    assert [x.caption for x in a] != [x.caption for x in other]
    val = make_shapes_dataset(50, "validation", seed=3)
    assert [x.caption for x in a] != [x.caption for x in val]
    assert make_shapes_dataset(10, "train", seed=3)[0].caption == a[0].caption  # n does not shift the stream


def test_images_are_uint8_rgb_and_objects_well_formed(train):
    for ex in train[:100]:
        assert ex.image.shape == (32, 32, 3) and ex.image.dtype == np.uint8
        assert 1 <= len(ex.objects) <= 3
        cells = [POSITIONS.index(o.position) for o in ex.objects]
        assert cells == sorted(set(cells))  # distinct cells (no overlap), in reading order
        # every object's colour is on the image, and nothing else but black is
        colours = {tuple(c) for c in ex.image.reshape(-1, 3)}
        assert colours == {(0, 0, 0)} | {COLOURS[o.colour] for o in ex.objects}
    assert make_shapes_dataset(2, "train", seed=0, image_size=48)[0].image.shape == (48, 48, 3)


# ------------------------------------------------------------------------------------------ splits
def test_held_out_pairs_never_in_train_and_half_of_test(train, test_split):
    pairs = {(o.colour, o.shape) for ex in train for o in ex.objects}
    assert not pairs & HELD_OUT
    assert not any(ex.held_out for ex in train)
    # every colour and every shape is still seen in training
    assert {c for c, _ in pairs} == set(COLOURS) and len({s for _, s in pairs}) == 4
    test_pairs = {(o.colour, o.shape) for ex in test_split for o in ex.objects}
    assert HELD_OUT <= test_pairs
    frac = sum(ex.held_out for ex in test_split) / len(test_split)
    assert 0.4 < frac < 0.6
    assert all(ex.held_out == any((o.colour, o.shape) in HELD_OUT for o in ex.objects) for ex in test_split)


def test_scenes_belong_to_one_split(train, test_split):
    val = make_shapes_dataset(300, "validation", seed=0)
    captions = [{ex.caption for ex in s} for s in (train, val, test_split)]
    assert not (captions[0] & captions[1]) and not (captions[0] & captions[2]) and not (captions[1] & captions[2])
    assert all(split_of(ex.objects) == ex.split for s in (train, val, test_split) for ex in s)
    # another seed's training scenes are still never test scenes (the split is by scene, not by seed)
    assert not {ex.caption for ex in make_shapes_dataset(300, "train", seed=9)} & captions[2]


# ------------------------------------------------------------------------------------------ captions
def test_caption_parses_back_to_its_objects(train, test_split):
    for ex in [*train, *test_split]:
        assert parse_caption(ex.caption, strict=True) == list(ex.objects)
        assert caption_of(parse_caption(ex.caption)) == ex.caption


def test_caption_parser_keeps_what_it_can_read():
    got = parse_caption("A large red blob at the top left and a tiny green square at the somewhere.")
    assert got == [ShapeObject("large", "red", None, "top left"), ShapeObject(None, "green", "square", None)]
    assert parse_caption("") == []
    with pytest.raises(DataError, match="is not 'a SIZE COLOUR SHAPE at the POSITION'"):
        parse_caption("a large red blob at the top left", strict=True)


def test_hand_checked_scene_caption_questions_and_pixels():
    objects = (ShapeObject("large", "red", "circle", "top left"), ShapeObject("small", "blue", "square", "centre"),
               ShapeObject("large", "green", "circle", "bottom right"))
    assert caption_of(objects) == ("a large red circle at the top left and a small blue square at the centre "
                                   "and a large green circle at the bottom right")
    qa = {q.question: q.answer for q in questions_for(objects)}
    assert qa["how many circles?"] == "two"
    assert qa["how many squares?"] == "one"
    assert qa["what colour is the square?"] == "blue"
    assert qa["where is the square?"] == "centre"
    assert qa["what size is the square?"] == "small"
    assert qa["what shape is the red object?"] == "circle"
    assert qa["what shape is the green object?"] == "circle"
    assert qa["how many triangles?"] == "zero"  # the first absent shape (no rng)
    # ambiguous questions are not asked: there are two circles
    assert "what colour is the circle?" not in qa and "where is the circle?" not in qa
    img = draw_scene(objects)
    assert tuple(img[5, 5]) == COLOURS["red"]  # centre of the top-left cell (pixels 0..10)
    assert tuple(img[15, 15]) == COLOURS["blue"]  # centre of the centre cell (11..20)
    assert tuple(img[26, 26]) == COLOURS["green"]
    assert tuple(img[15, 5]) == (0, 0, 0)  # the left cell is empty
    assert tuple(img[0, 0]) == (0, 0, 0)  # a large circle leaves the cell's corner black
    # a small object is smaller than a large one
    large = (draw_scene(objects[:1]).any(-1)).sum()
    small = draw_scene([ShapeObject("small", "red", "circle", "top left")]).any(-1).sum()
    assert small < large / 2


def test_generated_answers_match_the_objects(train):
    for ex in train[:200]:
        for q in ex.qa:
            if q.kind == "count":
                shape = q.question.removeprefix("how many ").removesuffix("s?")
                assert q.answer == ("zero", "one", "two", "three")[sum(o.shape == shape for o in ex.objects)]
            elif q.kind == "colour":
                shape = q.question.removeprefix("what colour is the ").removesuffix("?")
                (o,) = [o for o in ex.objects if o.shape == shape]  # asked only when exactly one
                assert q.answer == o.colour
            elif q.kind == "shape":
                colour = q.question.removeprefix("what shape is the ").removesuffix(" object?")
                (o,) = [o for o in ex.objects if o.colour == colour]
                assert q.answer == o.shape


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_score_right_and_wrong_answers(train, test_split):
    refs = [ex.caption for ex in test_split[:20]]
    assert caption_exact_match(refs, refs) == 1.0
    assert caption_exact_match([r.upper() + "." for r in refs], refs) == 1.0
    assert caption_exact_match([""] * 20, refs) == 0.0
    acc = attribute_accuracy(refs, test_split[:20])
    assert acc == {"colour": 1.0, "shape": 1.0, "size": 1.0, "position": 1.0, "count": 1.0, "parsed": 1.0}
    # one object's colour wrong in a one-object scene: colour 0, the rest right
    truth = [ShapeObject("large", "red", "circle", "top left")]
    acc = attribute_accuracy(["a large blue circle at the top left"], [truth])
    assert acc["colour"] == 0.0 and acc["shape"] == acc["position"] == acc["count"] == 1.0
    acc = attribute_accuracy(["a large red circle at the top left and a small red square at the top"], [truth])
    assert acc["colour"] == 1.0 and acc["count"] == 0.0
    with pytest.raises(DataError, match="2 predictions for 1 references"):
        attribute_accuracy(["a", "b"], [truth])

    qa = [QA("how many circles?", "two", "count"), QA("what colour is the square?", "blue", "colour")]
    assert qa_accuracy(["2", "Blue."], qa) == {"all": 1.0, "colour": 1.0, "count": 1.0}
    assert qa_accuracy(["one", "blue"], qa) == {"all": 0.5, "colour": 1.0, "count": 0.0}


def test_majority_baseline_is_the_most_common_training_answer(train, test_split):
    majority = majority_answers(train)
    assert set(majority) == {"colour", "shape", "size", "position", "count"}
    counts = [q.answer for q in all_questions(train) if q.kind == "count"]
    assert majority["count"] == max(set(counts), key=counts.count)
    qs = all_questions(test_split)
    acc = qa_accuracy(majority_predictions(majority, qs), qs)
    assert 0.0 < acc["all"] < 0.6  # a blind guess: far from solving the task
    assert acc["size"] < 0.7  # two sizes, drawn evenly


def test_bad_arguments_raise_data_error():
    with pytest.raises(DataError, match="split='dev' is unknown; use one of train, validation, test"):
        make_shapes_dataset(1, "dev")
    with pytest.raises(DataError, match="n=-1 is invalid"):
        make_shapes_dataset(-1)
    with pytest.raises(DataError, match="image_size=8 is too small"):
        make_shapes_dataset(1, image_size=8)


# ------------------------------------------------------------------------------------------ files
def test_load_image_npy_round_trip_and_errors(tmp_path, train):
    img = train[0].image
    np.save(tmp_path / "a.npy", img)
    out = load_image(tmp_path / "a.npy", image_size=32)
    assert out.dtype == np.uint8 and np.array_equal(out, img)
    gray = img[:, :, 0]
    np.save(tmp_path / "g.npy", gray)
    assert np.array_equal(load_image(tmp_path / "g.npy", channels=1)[:, :, 0], gray)

    np.save(tmp_path / "f.npy", img.astype(np.float64) / 255)
    with pytest.raises(DataError, match=r"holds float64 pixels, expected uint8 \(H, W, 3\); save uint8 pixels"):
        load_image(tmp_path / "f.npy")
    np.save(tmp_path / "chw.npy", img.transpose(2, 0, 1))
    with pytest.raises(DataError, match="channels-first"):
        load_image(tmp_path / "chw.npy")
    with pytest.raises(DataError, match="is 32x32 pixels, the model takes 64x64; resize it, or pass resize=True"):
        load_image(tmp_path / "a.npy", image_size=64)
    with pytest.raises(DataError, match="does not exist"):
        load_image(tmp_path / "missing.npy")
    (tmp_path / "x.tiff").write_bytes(b"II*")
    with pytest.raises(DataError, match="unknown image type .tiff"):
        load_image(tmp_path / "x.tiff")
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object))
    with pytest.raises(DataError, match="cannot read .* as a .npy file of pixels"):
        load_image(tmp_path / "obj.npy")  # never unpickled


def test_load_image_png_through_pillow(tmp_path, train):
    Image = pytest.importorskip("PIL.Image")
    img = train[0].image
    Image.fromarray(img).save(tmp_path / "a.png")
    assert np.array_equal(load_image(tmp_path / "a.png", image_size=32), img)  # PNG is lossless
    rgba = np.concatenate([img, np.full((32, 32, 1), 255, np.uint8)], axis=-1)
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.array_equal(load_image(tmp_path / "rgba.png"), img)  # alpha dropped
    assert load_image(tmp_path / "a.png", channels=1).shape == (32, 32, 1)
    assert load_image(tmp_path / "a.png", image_size=16, resize=True).shape == (16, 16, 3)
    np.save(tmp_path / "a.npy", img)
    assert load_image(tmp_path / "a.npy", image_size=64, resize=True).shape == (64, 64, 3)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read .* as an image"):
        load_image(tmp_path / "bad.png")


def test_png_without_pillow_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_pil(name, *args, **kwargs):
        if name == "PIL" or name.startswith("PIL."):
            raise ImportError("No module named 'PIL'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pil)
    (tmp_path / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError, match=r"needs Pillow: pip install 'llmcore\[vision\]'.*\.npy") as e:
        load_image(tmp_path / "a.png")
    assert "\n" not in str(e.value)


def test_load_features_npy_and_safetensors(tmp_path):
    import torch
    from safetensors.torch import save_file

    feats = np.random.default_rng(0).standard_normal((2, 5, 8))  # float64, as numpy makes them
    np.save(tmp_path / "f.npy", feats)
    t = load_features(tmp_path / "f.npy")
    assert t.dtype == torch.float32 and t.shape == (2, 5, 8)
    torch.testing.assert_close(t, torch.from_numpy(feats).float())
    save_file({"features": t, "other": t[:1].clone()}, str(tmp_path / "f.safetensors"))
    assert torch.equal(load_features(tmp_path / "f.safetensors"), t)
    assert load_features(tmp_path / "f.safetensors", key="other").shape == (1, 5, 8)
    save_file({"x": t}, str(tmp_path / "g.safetensors"))
    assert torch.equal(load_features(tmp_path / "g.safetensors"), t)  # the only tensor
    with pytest.raises(DataError, match=r"has no tensor 'nope' \(it holds"):
        load_features(tmp_path / "f.safetensors", key="nope")
    np.save(tmp_path / "i.npy", np.zeros((2, 3), np.int64))
    with pytest.raises(DataError, match="expected floating-point features"):
        load_features(tmp_path / "i.npy")
    np.save(tmp_path / "v.npy", np.zeros(3, np.float32))
    with pytest.raises(DataError, match=r"expected \(N, d\) for one input or \(B, N, d\)"):
        load_features(tmp_path / "v.npy")
