"""Transforms follow the Preprocessing they are built from; batch augmentation is exact where it can be."""

import numpy as np
import pytest
import torch
from PIL import Image

from xception.data import ShardSampler, TensorSource
from xception.data.transforms import Augmentation, BatchTransform, eval_transform, random_erase, train_transform
from xception.preprocessing import Preprocessing

GRAY28 = Preprocessing(input_size=28, crop_pct=1.0, interpolation="bilinear", mean=(0.25,), std=(0.5,), channels=1)


def batch(n=4, channels=1, size=28, seed=0):
    return torch.randint(0, 256, (n, channels, size, size), generator=torch.Generator().manual_seed(seed),
                         dtype=torch.uint8)


def test_evaluation_at_native_size_only_normalises():
    x = batch()
    assert torch.allclose(BatchTransform(GRAY28)(x), (x.float() / 255 - 0.25) / 0.5)


def test_full_crop_with_certain_flip_is_an_exact_mirror_image():
    x = batch()
    flip = Augmentation(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=1.0)
    keep = Augmentation(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    expected = (x.float() / 255 - 0.25) / 0.5
    assert torch.allclose(BatchTransform(GRAY28, flip)(x), expected.flip(-1), atol=1e-5)
    assert torch.allclose(BatchTransform(GRAY28, keep)(x), expected, atol=1e-5)


def test_augmentation_is_reproducible_from_its_generator_and_varies_otherwise():
    aug = BatchTransform(GRAY28, Augmentation(scale=(0.5, 1.0), translate=0.1))
    x = batch(8)

    def run(seed):
        return aug(x, torch.Generator().manual_seed(seed))

    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))
    assert run(1).shape == (8, 1, 28, 28)


def test_translation_brings_in_black_border():
    white = torch.full((64, 1, 28, 28), 255, dtype=torch.uint8)
    pre = GRAY28.replace(mean=(0.0,), std=(1.0,))
    shifted = BatchTransform(pre, Augmentation(scale=(1.0, 1.0), ratio=(1.0, 1.0), translate=0.2))(
        white, torch.Generator().manual_seed(0))
    assert shifted.min() == 0.0 and shifted.max() == pytest.approx(1.0)


def test_grayscale_batches_feed_three_channel_models():
    pre = Preprocessing(input_size=28, crop_pct=1.0, mean=(0.5,) * 3, std=(0.5,) * 3)
    out = BatchTransform(pre)(batch(2))
    assert out.shape == (2, 3, 28, 28) and torch.equal(out[:, 0], out[:, 2])


def test_batch_resize_and_crop_matches_the_preprocessing_rule():
    pre = Preprocessing(input_size=24, crop_pct=0.75, interpolation="bilinear", mean=(0.0,), std=(1.0,),
                        channels=1)
    assert pre.resize_size == 32
    x = batch(1, size=64)
    out = BatchTransform(pre)(x)
    resized = torch.nn.functional.interpolate(x.float() / 255, size=(32, 32), mode="bilinear", antialias=True,
                                              align_corners=False)
    assert out.shape == (1, 1, 24, 24) and torch.allclose(out, resized[..., 4:28, 4:28], atol=1e-6)


def test_pil_evaluation_transform_resizes_the_shorter_side_then_crops_the_centre():
    pre = Preprocessing(input_size=20, crop_pct=0.5, interpolation="bilinear", mean=(0.5, 0.5, 0.5),
                        std=(0.5, 0.5, 0.5))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8))
    out = eval_transform(pre)(image)
    expected = np.asarray(image.resize((53, 40), Image.BILINEAR), dtype=np.float32)[10:30, 16:36] / 127.5 - 1
    assert out.shape == (3, 20, 20)
    assert np.abs(out.permute(1, 2, 0).numpy() - expected).max() < 0.05  # PIL vs torchvision antialiasing


@pytest.mark.parametrize("size, world", [(10, 1), (10, 3), (2, 4)])
def test_evaluation_shards_cover_every_sample_exactly_once(size, world):
    shards = [list(ShardSampler(size, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(size))
    assert [len(ShardSampler(size, r, world)) for r in range(world)] == [len(s) for s in shards]


def test_in_memory_evaluation_batches_keep_order_and_labels():
    source = TensorSource(batch(10), torch.arange(10) % 3, ["a", "b", "c"], "test")
    got = [(x.shape[0], y.tolist()) for x, y, _ in source.batches(GRAY28, train=False, batch_size=4)]
    assert got == [(4, [0, 1, 2, 0]), (4, [1, 2, 0, 1]), (2, [2, 0])]
    with pytest.raises(ValueError, match="need a sampler"):
        source.batches(GRAY28, train=True, batch_size=4)


# -- random erasing (Zhong et al. 2020) ----------------------------------------------------------------------


def erased_boxes(before: torch.Tensor, after: torch.Tensor) -> list[tuple[int, int] | None]:
    """Per image, the (height, width) of the changed pixels, checked to be one filled rectangle; None: unchanged."""
    boxes: list[tuple[int, int] | None] = []
    for changed in (before != after).any(1):
        if not changed.any():
            boxes.append(None)
            continue
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        h, w = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert int(changed.sum()) == h * w, "the erased pixels form one rectangle"
        boxes.append((h, w))
    return boxes


def test_random_erasing_replaces_one_rectangle_of_the_stated_area_and_shape():
    side, low, high = 64, 0.1, 0.2
    aug = Augmentation(erase=1.0, erase_scale=(low, high), erase_ratio=(0.5, 2.0))
    x = torch.zeros(400, 2, side, side)
    boxes = erased_boxes(x, random_erase(x, aug, torch.Generator().manual_seed(0)))
    assert None not in boxes
    areas = [h * w / side**2 for h, w in boxes]
    # Sides are rounded to whole pixels: an area may move by about half a pixel row and column.
    slack = (side + 1) / side**2
    assert all(low - slack <= a <= high + slack for a in areas)
    assert min(areas) < low + 0.01 and max(areas) > high - 0.01  # the whole range is drawn
    assert all(0.5 * 0.8 <= h / w <= 2.0 * 1.25 for h, w in boxes)


def test_random_erasing_fills_with_standard_normal_noise_and_is_identity_at_probability_zero():
    x = torch.zeros(200, 1, 32, 32)
    out = random_erase(x, Augmentation(erase=1.0, erase_scale=(0.3, 0.4)), torch.Generator().manual_seed(1))
    noise = out[out != 0]
    assert noise.numel() > 50_000 and abs(noise.mean()) < 0.02 and abs(noise.std() - 1) < 0.02
    assert random_erase(x, Augmentation(erase=0.0)) is x


def test_random_erasing_happens_with_its_probability():
    x = torch.zeros(4000, 1, 28, 28)
    boxes = erased_boxes(x, random_erase(x, Augmentation(erase=0.3), torch.Generator().manual_seed(2)))
    share = sum(b is not None for b in boxes) / len(boxes)
    assert abs(share - 0.3) < 0.03  # 4 standard deviations of a binomial share


def test_batch_augmentation_erases_after_normalising_and_is_reproducible():
    x = batch(64)
    plain = Augmentation(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.5)
    erasing = Augmentation(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.5, erase=1.0)

    def run(aug, seed):
        return BatchTransform(GRAY28, aug)(x, torch.Generator().manual_seed(seed))

    assert torch.equal(run(erasing, 3), run(erasing, 3)) and not torch.equal(run(erasing, 3), run(erasing, 4))
    # The same flips as without erasing (erasing draws after them), one noisy rectangle on top of each image.
    boxes = erased_boxes(run(plain, 3), run(erasing, 3))
    assert all(b is not None for b in boxes)
    assert torch.equal(run(Augmentation(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.5, erase=0.0), 3), run(plain, 3))


def test_image_pipeline_erases_one_rectangle_reproducibly_from_the_seed():
    pre = Preprocessing(input_size=32, crop_pct=1.0, interpolation="bilinear")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    whole = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    erasing = train_transform(pre, Augmentation(**whole, erase=1.0))

    def run(seed):
        torch.manual_seed(seed)  # what the folder dataset does for each sample
        return erasing(image)

    assert torch.equal(run(5), run(5)) and not torch.equal(run(5), run(6))
    plain = train_transform(pre, Augmentation(**whole))(image)
    assert torch.allclose(plain, eval_transform(pre)(image), atol=1e-6)
    assert erased_boxes(plain[None], run(5)[None])[0] is not None


def test_erasing_settings_are_checked():
    for bad in (dict(erase=1.5), dict(erase_scale=(0.4, 0.2)), dict(erase_scale=(0.0, 0.2)), dict(erase_ratio=(0, 1))):
        with pytest.raises(ValueError, match="erase"):
            Augmentation(**bad)


def test_a_larger_input_upsamples_small_images_the_same_in_training_and_evaluation():
    """28 px Fashion-MNIST at input_size 32: the whole-image crop of training is evaluation's resize."""
    pre = GRAY28.replace(input_size=32)
    x = batch(8)
    whole = Augmentation(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0)
    trained = BatchTransform(pre, whole)(x, torch.Generator().manual_seed(0))
    evaluated = BatchTransform(pre)(x)
    direct = (torch.nn.functional.interpolate(x.float() / 255, size=(32, 32), mode="bilinear",
                                              align_corners=False) - 0.25) / 0.5
    assert trained.shape == evaluated.shape == (8, 1, 32, 32)
    assert torch.allclose(evaluated, direct, atol=1e-5) and torch.allclose(trained, direct, atol=1e-5)
