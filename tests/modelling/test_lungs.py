"""Lung fields: the shipped U-Net's quality on real masks, the `lungs` command, and refusal of non-chest images."""

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from builders import make_dicom
from conftest import SHARED_CXR

from cxr_core.modelling import lung_probes, lungs
from cxr_core.pipeline import lung_extra_data, lung_training

ROOT = Path(__file__).resolve().parents[2]
SHARED_LUNGS = SHARED_CXR.parent / "lungs"  # beside the shared X-rays (CXR_SHARED_DATA moves both)


@pytest.fixture(scope="module")
def lung_model():
    model = lungs.load_lung_model()
    assert model is not None, "the project ships a lung model in models/lungs"
    return model


@pytest.fixture(scope="module")
def mask_records(shared_cxr):
    records = lung_training.load_records(SHARED_LUNGS / "manifest.csv")
    test = lung_training.split_records(records, seed=0)["test"]
    by_source = {}
    for record in test:
        by_source.setdefault(record["source"], []).append(record)
    return {source: rows[:12] for source, rows in by_source.items()}  # a fixed set, held out in training


def test_geometry_round_trip_and_plausibility_of_a_drawn_pair_of_lungs():
    gray = np.zeros((300, 200), np.uint8)
    gray[20:280, 10:190] = np.random.default_rng(0).integers(30, 220, (260, 180))
    small, frame = lungs.lung_input(gray, 64)
    assert small.shape == (64, 64)
    drawn = np.zeros((300, 200), np.uint8)
    drawn[60:200, 30:90] = 255
    drawn[60:200, 110:170] = 255
    back = lungs.mask_to_original(lung_training.mask_to_frame(drawn, frame), frame, gray.shape)
    assert back.shape == gray.shape and lungs.dice(back, drawn) > 0.9
    assert lungs.plausible_lungs(lungs.postprocess(drawn))[0]
    middle = np.zeros((300, 200), np.uint8)
    middle[100:200, 80:120] = 255  # one region on the midline: not a lung
    assert not lungs.plausible_lungs(lungs.postprocess(middle))[0]


@pytest.mark.slow
def test_the_shipped_lung_model_on_held_out_masks_of_both_sources(lung_model, mask_records):
    from cxr_core.imaging.decode import read_image

    assert set(mask_records) == {"jsrt", "shenzhen"} and all(mask_records.values()), {
        source: len(records) for source, records in mask_records.items()
    }
    for source, records in mask_records.items():
        scores = []
        for record in records:
            gray = read_image(record["image_path"]).pixels
            result = lung_model.segment(gray)
            truth = lung_training.read_mask(record["mask_path"], gray.shape)
            assert result["mask"].shape == gray.shape and result["ok"], (record["image"], result["reason"])
            scores.append(lungs.dice(result["mask"], truth))
        assert np.mean(scores) >= 0.94, (source, np.mean(scores))
        assert min(scores) >= 0.80, (source, min(scores))


@pytest.mark.parametrize("kind", list(lung_probes.non_chest_pictures()))
def test_images_with_no_plausible_lungs_are_refused_not_scored(kind, lung_model):
    from cxr_core.errors import ImageError
    from cxr_core.imaging.preprocess import NOT_A_CHEST, to_model_input

    data = cv2.imencode(".png", lung_probes.non_chest_pictures()[kind])[1].tobytes()
    with pytest.raises(ImageError) as refused:
        to_model_input(data, lungs=lung_model)
    message = str(refused.value)
    assert message.startswith(NOT_A_CHEST) or "blank" in message or "flat" in message, message


def test_real_xrays_of_every_source_pass_the_lung_check(lung_model, shared_cxr):
    from conftest import shared_records

    from cxr_core.imaging.preprocess import to_model_input

    for source in ("tbx11k", "openist", "shenzhen", "da", "rahmandb"):
        for row in shared_records(source)[:4]:
            found = to_model_input(shared_cxr / row["path"], lungs=lung_model).lungs
            assert found["ok"] and 0.05 < found["area_fraction"] < 0.65, (row["path"], found["reason"])


def _write(kind: str, gray: np.ndarray, folder: Path) -> Path:
    if kind == "dicom-monochrome1":
        path = folder / "inverted.dcm"
        path.write_bytes(make_dicom((255 - gray).astype(np.uint16) * 16, photometric="MONOCHROME1"))
    else:
        path = folder / (f"film-{kind}.jpg" if kind == "jpeg" else f"film-{kind}.png")
        cv2.imwrite(str(path), gray)
    return path


@pytest.mark.slow
def test_lungs_command_writes_masks_of_each_inputs_own_size(tmp_path, shared_cxr, lung_model):
    from conftest import shared_records

    from cxr_core.imaging.decode import read_image

    original = read_image(shared_cxr / shared_records("da", "Tuberculosis")[0]["path"]).pixels
    wide = original[: original.shape[0] * 3 // 4]  # non-square
    inputs = tmp_path / "in"
    inputs.mkdir()
    paths = [
        _write(kind, wide if kind == "png" else original, inputs)
        for kind in ("png", "jpeg", "dicom-monochrome1")
    ]
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "masks"
    done = subprocess.run([sys.executable, "-m", "cxr_core", "lungs", str(inputs), "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "broken.png: not segmented" in done.stderr and "Traceback" not in done.stderr
    masks = {}
    for path in paths:
        mask = cv2.imread(str(out / f"{path.stem}.png"), cv2.IMREAD_GRAYSCALE)
        source = read_image(path).pixels
        assert mask.shape == source.shape, path.name
        assert set(np.unique(mask)) <= {0, 255} and 0.08 < (mask > 0).mean() < 0.6, path.name
        masks[path.suffix] = mask
    # MONOCHROME1 is inverted on reading: its mask matches the MONOCHROME2 JPEG's
    assert lungs.dice(masks[".dcm"], masks[".jpg"]) > 0.9
    twin = inputs / "film-png.jpg"  # the same stem as film-png.png: its mask must not overwrite the other
    cv2.imwrite(str(twin), original)
    again = subprocess.run([sys.executable, "-m", "cxr_core", "lungs", str(inputs / "film-png.png"), str(twin),
                            "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert again.returncode == 0 and (out / "film-png-2.png").is_file(), again.stdout + again.stderr


def test_a_tiny_unet_trains_for_one_epoch(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (8, 64, 64, 1), dtype=np.uint8)
    y = np.zeros((8, 64, 64, 1), np.float32)
    y[:, 16:48, 8:24] = 1
    y[:, 16:48, 40:56] = 1
    out = lung_training.train_unet(None, str(tmp_path / "tiny.keras"), side=64, epochs=1, batch_size=4,
                                   base_filters=4, depth=3, verbose=0, data=((x, y), (x[:2], y[:2])))  # fmt: skip
    assert out["epochs_run"] == 1 and (tmp_path / "tiny.keras").exists()
    probabilities = lungs.predict_small(out["model"], x[0, :, :, 0])
    assert probabilities.shape == (64, 64) and np.isfinite(probabilities).all()


def test_soft_targets_keep_where_the_edge_lies_inside_a_small_pixel(mask_records):
    """A real mask taken to 64 px and back: its lung shares come back closer to it than a rounded mask."""
    from cxr_core.imaging.decode import read_image

    for records in mask_records.values():
        record = records[0]
        gray = read_image(record["image_path"]).pixels
        truth = lung_training.read_mask(record["mask_path"], gray.shape)
        _, frame = lungs.lung_input(gray, 64)
        hard = lung_training.mask_to_frame(truth, frame)
        soft = lung_training.mask_to_frame(truth, frame, soft=True)
        assert set(np.unique(hard)) <= {0.0, 1.0} and soft.min() >= 0 and soft.max() <= 1
        assert ((soft > 0) & (soft < 1)).any()
        back_hard = lungs.dice(lungs.mask_to_original(hard, frame, gray.shape), truth)
        back_soft = lungs.dice(lungs.mask_to_original(soft, frame, gray.shape), truth)
        assert back_soft > back_hard > 0.95, (record["image"], back_soft, back_hard)
        rng = np.random.default_rng(0)
        _, augmented = lung_training.augment(lungs.lung_input(gray, 64)[0], soft, rng, soft=True)
        assert ((augmented > 0) & (augmented < 1)).any()  # augmentation keeps the shares


def test_the_separable_unet_has_a_fraction_of_the_parameters_and_the_same_contract():
    plain = lungs.build_unet(64, 8, 4)
    separable = lungs.build_unet(64, 8, 4, architecture="separable")
    kinds = {layer.__class__.__name__ for layer in separable.layers}
    assert "SeparableConv2D" in kinds and separable.count_params() < plain.count_params() / 3
    assert separable.input_shape == plain.input_shape and separable.output_shape == plain.output_shape
    x = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    probabilities = lungs.predict_small(separable, x)
    assert probabilities.shape == (64, 64) and ((probabilities >= 0) & (probabilities <= 1)).all()
    with pytest.raises(ValueError, match="unknown lung architecture"):
        lungs.build_unet(64, 8, 4, architecture="transformer")


def test_the_light_unet_has_one_convolution_in_each_full_resolution_block_and_the_same_contract():
    """Only the two full-resolution blocks lose a convolution; the levels below are the plain U-Net's."""
    plain = lungs.build_unet(64, 4, 4)
    light = lungs.build_unet(64, 4, 4, architecture="light")

    def convolutions(model, full_resolution: bool):
        """Kernel shapes of the 3x3 convolutions at full resolution, or of those below it."""
        return [
            layer.kernel.shape for layer in model.layers
            if layer.__class__.__name__ == "Conv2D" and layer.kernel_size == (3, 3)
            and (layer.output.shape[1] == 64) == full_resolution
        ]  # fmt: skip

    assert len(convolutions(plain, True)) == 4 and len(convolutions(light, True)) == 2
    assert convolutions(light, False) == convolutions(plain, False)
    assert light.input_shape == plain.input_shape and light.output_shape == plain.output_shape
    assert light.count_params() < plain.count_params()
    probabilities = lungs.predict_small(light, np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    assert probabilities.shape == (64, 64) and ((probabilities >= 0) & (probabilities <= 1)).all()


def test_the_light_add_unet_adds_its_skips_so_each_decoder_block_reads_half_the_channels():
    """light-add is light with skips added: the decoder's first convolutions read half the channels."""
    light = lungs.build_unet(64, 4, 4, architecture="light")
    light_add = lungs.build_unet(64, 4, 4, architecture="light-add")

    def layer_kinds(model):
        return [layer.__class__.__name__ for layer in model.layers]

    def kernels(model):
        return [tuple(layer.kernel.shape) for layer in model.layers if layer.__class__.__name__ == "Conv2D"]

    assert layer_kinds(light).count("Concatenate") == 4 and "Add" not in layer_kinds(light)
    assert layer_kinds(light_add).count("Add") == 4 and "Concatenate" not in layer_kinds(light_add)
    halved = [(3, 3, inputs // 2, outputs) if inputs == 2 * outputs else (3, 3, inputs, outputs)
              for _, _, inputs, outputs in kernels(light)[:-1]]  # fmt: skip
    decoder_firsts = [shape for shape in kernels(light) if shape[2] == 2 * shape[3] and shape[0] == 3]
    assert len(decoder_firsts) == 4  # one a level: the block after each skip
    assert kernels(light_add) == halved + [kernels(light)[-1]]  # the 1x1 output convolution unchanged
    # each sum joins an up-sampled map with the encoder output that goes on to a max-pooling: the skip
    ups = {id(layer.output) for layer in light_add.layers if layer.__class__.__name__ == "Conv2DTranspose"}
    skips = {id(layer.input) for layer in light_add.layers if layer.__class__.__name__ == "MaxPooling2D"}
    for layer in light_add.layers:
        if layer.__class__.__name__ == "Add":
            assert sorted((id(t) in ups, id(t) in skips) for t in layer.input) == [(False, True), (True, False)]
    assert light_add.input_shape == light.input_shape and light_add.output_shape == light.output_shape
    probabilities = lungs.predict_small(light_add, np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))
    assert probabilities.shape == (64, 64) and ((probabilities >= 0) & (probabilities <= 1)).all()


def test_masked_lung_box_keeps_the_lungs_and_blanks_heart_abdomen_and_shoulders(lung_model, shared_cxr):
    """ingest.lung_mask: inside the lungs the network sees what the unmasked box shows; far outside, black."""
    from conftest import shared_records

    from cxr_core.imaging.preprocess import LUNG_MASK_GROWTH, to_model_input

    for source in ("shenzhen", "da", "rahmandb", "tbx11k"):
        row = shared_records(source)[0]
        options = {"lungs": lung_model, "crop_to_lungs": True, "lung_margin": 0.08}
        plain = to_model_input(shared_cxr / row["path"], **options)
        masked = to_model_input(shared_cxr / row["path"], **options, mask_to_lungs=True)
        assert masked.box == plain.box
        top, left, bottom, right = plain.box
        mask = cv2.resize(plain.lungs["mask"][top:bottom, left:right], (128, 128), interpolation=cv2.INTER_AREA)
        grow = int(round(LUNG_MASK_GROWTH * 128))
        inside = mask >= 128
        far = cv2.dilate(inside.astype(np.uint8), np.ones((6 * grow + 1, 6 * grow + 1), np.uint8)) == 0
        assert inside.mean() > 0.2 and far.mean() > 0.05, (row["path"], inside.mean(), far.mean())
        np.testing.assert_array_equal(masked.pixels[inside], plain.pixels[inside])  # lung tissue kept, to its edge
        assert masked.pixels[far].max() <= 2, row["path"]  # the mediastinum gap, abdomen, shoulders: gone


def test_lung_runs_of_other_seeds_are_measured_on_the_same_held_out_films(tmp_path, shared_cxr):
    """The split follows lungs.split_seed only, so the spread over seeds is the training's, not the split's."""
    records = lung_training.load_records(SHARED_LUNGS / "manifest.csv")
    rows = [r for r in records if r["source"] == "shenzhen"][:10]
    with open(tmp_path / "manifest.csv", "w") as fh:
        fh.write("source,image,mask\n" + "".join(f"shenzhen,{r['image_path']},{r['mask_path']}\n" for r in rows))
    tiny = {"side": 32, "base_filters": 2, "depth": 2, "epochs": 1, "batch_size": 4, "patience": 1}

    def held_out(name, **seeds):
        meta = lung_training.run_lung_train(tmp_path, tmp_path / name, {**tiny, **seeds})
        assert meta["params"]["seed"] == seeds.get("seed", 0)
        return meta["held_out_images"]

    first = held_out("a", seed=0)
    assert len(first) == 2 and set(first) <= {r["image_path"] for r in rows}
    assert held_out("b", seed=1) == first
    assert held_out("c", seed=1, split_seed=3) != first


@pytest.mark.parametrize("family", lung_extra_data.NEGATIVE_FAMILIES)
def test_synthetic_no_lung_pictures_reach_the_lung_network_with_empty_masks(family):
    """What negatives train on is what the clinic's path would hand the lung network: pictures the
    decoder's blank/flat checks let through (else the network would never meet them), varied, no lungs."""
    from cxr_core.imaging.preprocess import to_model_input

    rng = np.random.default_rng(5)
    pictures = [lung_extra_data.synthetic_negative(family, rng) for _ in range(6)]
    for picture in pictures:
        assert picture.dtype == np.uint8 and picture.ndim == 2 and min(picture.shape) >= 320
        to_model_input(cv2.imencode(".png", picture)[1].tobytes())  # raises on a blank or flat picture
    assert len({picture.tobytes() for picture in pictures}) == 6
    X, Y = lung_extra_data.negative_pairs(8, 64, "letterbox", seed=3)
    assert X.shape == Y.shape == (8, 64, 64, 1) and X.std() > 10 and not Y.any()
    again, _ = lung_extra_data.negative_pairs(8, 64, "letterbox", seed=3)
    assert np.array_equal(X, again)  # a seed gives the same negatives: runs can be repeated


def test_training_with_negatives_adds_them_to_training_and_validation(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (8, 64, 64, 1), dtype=np.uint8)
    y = np.zeros((8, 64, 64, 1), np.float32)
    y[:, 16:48, 8:24] = 1
    out = lung_training.train_unet(None, str(tmp_path / "tiny.keras"), side=64, epochs=1, batch_size=4,
                                   base_filters=4, depth=3, verbose=0, data=((x, y), (x[:4], y[:4])),
                                   negatives=0.5)  # fmt: skip
    assert out["epochs_run"] == 1
    assert out["train_films"] == 12 and out["val_films"] == 6


def _distillation_folder(root: Path, shared_cxr: Path) -> tuple[Path, Path]:
    """A labelled X-ray folder (manifest layout): rahmandb 3 films, da 2, a Shenzhen film (a source of
    the masks), and a byte copy of a mask image filed under a source without masks; and a mask set of
    ten Shenzhen films."""
    import csv
    import shutil

    masks = lung_training.load_records(SHARED_LUNGS / "manifest.csv")
    shenzhen = [r for r in masks if r["source"] == "shenzhen"][:10]
    (root / "masks").mkdir(parents=True)
    with open(root / "masks" / "manifest.csv", "w") as fh:
        fh.write("source,image,mask\n" + "".join(f"shenzhen,{r['image_path']},{r['mask_path']}\n" for r in shenzhen))
    films = root / "films"
    with open(shared_cxr / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    chosen = ([r for r in rows if r["source"] == "rahmandb" and r["label"] == "Tuberculosis"][:3]
              + [r for r in rows if r["source"] == "da"][:2]
              + [r for r in rows if r["source"] == "shenzhen"][200:201])  # not among the ten masks  # fmt: skip
    lines = []
    for row in chosen:
        (films / row["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(shared_cxr / row["path"], films / row["path"])
        lines.append(f"{row['source']},{row['label']},{row['path']}\n")
    (films / "copies").mkdir()
    shutil.copy(shenzhen[0]["image_path"], films / "copies" / "renamed.png")
    lines.append("openist,Normal,copies/renamed.png\n")
    (films / "manifest.csv").write_text("source,label,path\n" + "".join(lines))
    return root / "masks", films


def test_distillation_takes_films_in_turn_from_each_source_and_never_a_masked_one(tmp_path, shared_cxr):
    masks, films = _distillation_folder(tmp_path, shared_cxr)
    mask_rows = lung_training.load_records(masks / "manifest.csv")

    picks = [lung_extra_data.choose_distillation_films(films, 4, seed, mask_rows) for seed in range(6)]
    for four in picks:  # in turn: two and two every time (a random four of the five: 3 and 1 two times in five)
        assert sorted(r.source for r in four) == ["da", "da", "rahmandb", "rahmandb"]
    assert len({tuple(r.path for r in four) for four in picks}) > 1  # the seed chooses which rahmandb films
    again = lung_extra_data.choose_distillation_films(films, 4, 3, mask_rows)
    assert [r.path for r in again] == [r.path for r in picks[3]]
    everything = lung_extra_data.choose_distillation_films(films, 50, seed=0, mask_records=mask_rows)
    assert len(everything) == 5  # no Shenzhen film (a source with masks), no copy of a mask image
    assert {r.source for r in everything} == {"rahmandb", "da"}
    assert len(lung_extra_data.choose_distillation_films(films, 50, seed=0)) == 7  # without masks, all of them


def test_the_teachers_masks_land_in_the_students_own_frame(lung_model, mask_records):
    """A 64 px student of the 128 px teacher: its target on a film with a radiologist's mask matches
    that mask brought into the same 64 px frame (geometry, not just "some lung-like blob")."""
    from cxr_core.imaging.decode import read_image
    from cxr_core.pipeline.datasets import Record

    rows = mask_records["shenzhen"][:4] + mask_records["jsrt"][:2]
    taught = lung_extra_data.distillation_pairs(lung_model, [Record(r["image_path"], 0, r["source"]) for r in rows],
                                              64, "letterbox")  # fmt: skip
    X, Y, kept = taught.X, taught.Y, taught.kept
    Xt, Yt = lung_training.prepare_pairs(rows, 64, "letterbox", soft=True)
    assert len(kept) == 6 and X.shape == Y.shape == (6, 64, 64, 1) and len(taught.hashes) == 6
    assert np.array_equal(X, Xt)  # the same input the student is trained on for a masked film
    for row, target, truth in zip(rows, Y[..., 0], Yt[..., 0], strict=True):
        assert target.min() >= 0.0 and target.max() <= 1.0
        gray = read_image(row["image_path"]).pixels
        at_full_size = lungs.dice(lung_model.segment(gray)["mask"], lung_training.read_mask(row["mask_path"], gray.shape))
        in_the_frame = 2 * np.minimum(target, truth).sum() / (target.sum() + truth.sum())
        assert abs(in_the_frame - at_full_size) < 0.02  # as good (or bad) as the teacher is on that film
    assert np.mean([lungs.dice(t > 0.5, u > 0.5) for t, u in zip(Y[..., 0], Yt[..., 0], strict=True)]) > 0.9


def test_a_distilled_lung_model_records_its_teacher_and_its_census_leaves_those_films_out(tmp_path, shared_cxr, lung_model):
    masks, films = _distillation_folder(tmp_path, shared_cxr)
    tiny = {"side": 32, "base_filters": 2, "depth": 2, "epochs": 1, "batch_size": 4, "patience": 1,
            "distill_data": str(films), "distill_films": 3}  # fmt: skip
    zipped = shutil.make_archive(str(tmp_path / "same-films"), "zip", films)  # the census's films, spelt otherwise
    meta = lung_training.run_lung_train(masks, tmp_path / "student", tiny, census_data=zipped)

    distilled = meta["distilled"]
    assert distilled["teacher"] == lung_model.version and distilled["teacher_sha256"] == lung_model.sha256
    assert distilled["teacher_runtime"] == lung_model.runtime and distilled["asked"] == 3
    kept = distilled["films"]
    assert kept + len(distilled["teacher_refused"]) + len(distilled["unreadable"]) == 3 and kept >= 2
    assert sorted(distilled["by_source"]) == ["da", "rahmandb"] and len(distilled["paths"]) == kept
    assert meta["split"]["train"] == 7 and meta["train_films"] == 7 + kept  # the taught films reached training
    counted = meta["census"]["films"]
    # left out: the taught films and the copy of a mask image (bytes, whatever the path or archive)
    assert counted["seen_in_training"] == kept + 1
    assert counted["checked"] + counted["unreadable_or_flat"] == 7 - kept - 1
    card = (tmp_path / "student" / "MODEL_CARD.md").read_text()
    assert "Taught by another lung model" in card and lung_model.version in card and "it never trained on" in card


def test_distillation_without_a_dataset_is_refused_before_training(tmp_path, capsys):
    from cxr_core import cli

    code = cli.main(["lungs-train", "--data", "data/sample/lungs", "--out", str(tmp_path / "out"),
                     "--set", "lungs.distill_films=10"])  # fmt: skip
    assert code == 2 and "lungs.distill_data" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
