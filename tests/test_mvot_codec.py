"""Visual codes in byte shards: 0xFF, c per code (model/mvot.py), read back into ids >= 259."""

import numpy as np
import pytest

from blt_scale.model.mvot import IMAGE_OFFSET, image_bytes, stream_bytes, stream_ids
from blt_scale.model.vocab import BOS, EOS, OFFSET


def test_text_and_codes_round_trip():
    rng = np.random.default_rng(0)
    for _ in range(50):
        parts, expected = [], []
        for _ in range(rng.integers(1, 6)):
            text = "".join(rng.choice(list("ab é€\n"), size=rng.integers(0, 8))).encode()
            codes = rng.integers(0, 256, size=rng.integers(0, 5))
            codes[: rng.integers(0, 2)] = 255  # a code equal to the mark itself
            parts += [text, image_bytes(codes)]
            expected += [b + OFFSET for b in text] + [IMAGE_OFFSET + int(c) for c in codes]
        data = b"".join(parts)
        ids = stream_ids(data, bos=True, eos=True)
        assert ids.tolist() == [BOS, *expected, EOS]
        assert stream_bytes(ids) == data


def test_bad_codes_and_streams_are_refused():
    with pytest.raises(ValueError, match="0..255"):
        image_bytes([256])
    with pytest.raises(ValueError, match="ends the document"):
        stream_ids(b"abc\xff")
    assert stream_ids(b"\xff\xff").tolist() == [IMAGE_OFFSET + 255]
