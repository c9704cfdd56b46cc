from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sft_engine.errors import ConfigError
from sft_engine.preprocess import Preprocessing


def test_all_image_forms_give_the_same_tensor(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    prep = Preprocessing(input_size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    from_path = prep.image_to_array(tmp_path / "a.png")
    from_pil = prep.image_to_array(Image.fromarray(pixels))
    from_array = prep.image_to_array(pixels)
    assert from_path.shape == (3, 32, 32) and from_path.dtype == np.float32
    np.testing.assert_array_equal(from_path, from_pil)
    np.testing.assert_array_equal(from_path, from_array)


def test_normalization_matches_formula():
    prep = Preprocessing(input_size=8, mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.5))
    pixels = np.full((8, 8, 3), 255, np.uint8)
    out = prep.image_to_array(pixels)
    np.testing.assert_allclose(out[:, 0, 0], [(1 - 0.1) / 0.5, (1 - 0.2) / 0.5, (1 - 0.3) / 0.5], rtol=1e-6)


@pytest.mark.parametrize("kw", [dict(input_size=2), dict(mean=(0.5, 0.5)), dict(std=(0.5, 0.0, 0.5))])
def test_bad_values_rejected(kw):
    with pytest.raises(ConfigError):
        Preprocessing(**kw)


def test_unreadable_image_names_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ConfigError, match="bad.png cannot be read"):
        Preprocessing(input_size=8).image_to_array(tmp_path / "bad.png")
