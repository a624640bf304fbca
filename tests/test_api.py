"""The library API refuses what it cannot code, in one clear error: integer, non-finite or
channels-last audio, bad codes and lengths, a stream shared between threads or layouts."""

from __future__ import annotations

import dataclasses
import io
import threading

import numpy as np
import pytest
import torch

from codec import CodecError, ModelBusyError
from codec.audio_io import AudioError
from codec.bitstream import BitstreamError, read_header
from codec.stream import StreamEncoder
from conftest import TINY, make_model, tone
from test_lowband import LOWBAND


@pytest.fixture(scope="module")
def model():
    return make_model(TINY)


def wav(seconds: float = 0.1, channels: int = 1) -> torch.Tensor:
    return torch.from_numpy(tone(seconds, TINY.sample_rate, channels)).float()[None]  # [1, C, T]


def test_a_numpy_array_codes_as_the_same_tensor(model):
    x = wav()
    assert torch.equal(model.encode(x.numpy(), n_q=4), model.encode(x, n_q=4))


@pytest.mark.parametrize("bad, error, says", [
    (lambda x: (x * 32767).round().to(torch.int16), AudioError, "float samples"),
    (lambda x: x.index_fill(-1, torch.tensor([40]), float("nan")), AudioError, "non-finite"),
    (lambda x: x.index_fill(-1, torch.tensor([40]), float("inf")), AudioError, "non-finite"),
    (lambda x: x.reshape(1, -1, 1).expand(1, -1, 2).contiguous(), ValueError, "channels last"),
    (lambda x: x[0], ValueError, "[B, C, T]"),
], ids=["int16", "nan", "inf", "channels-last", "2-d"])
def test_audio_encode_cannot_code_is_refused(model, bad, error, says):
    with pytest.raises(error, match=None) as e:
        model.encode(bad(wav()), n_q=4)
    assert says in str(e.value)


@pytest.mark.parametrize("kwargs, says", [
    ({"n_q": 2.0}, "n_q must be an integer"),
    ({"n_q": True}, "n_q must be an integer"),
    ({"kbps": "6"}, "kbps must be a number"),
    ({"kbps": 16.0, "n_q": 4}, "not both"),
], ids=["float-n_q", "bool-n_q", "text-kbps", "both"])
def test_bad_bitrate_arguments_are_refused(model, kwargs, says):
    with pytest.raises(ValueError, match=says):
        model.encode(wav(), **kwargs)


@pytest.mark.parametrize("change, says", [
    (lambda c: c.float(), "integers"),
    (lambda c: torch.cat([c, c[:, :, :1]], dim=2), "1..4 codes a frame"),
    (lambda c: c.index_fill(2, torch.tensor([1]), TINY.codebook_size), "codes must be in 0..15"),
    (lambda c: c.index_fill(2, torch.tensor([3]), -1), "codes must be in 0..15"),
], ids=["float", "too-many", "too-large", "negative"])
def test_bad_codes_are_refused(model, change, says):
    codes = model.encode(wav(), n_q=4)
    with pytest.raises(ValueError, match=says):
        model.decode(change(codes))


@pytest.mark.parametrize("length", [-1, 10**9, 10.0, True])
def test_a_bad_length_is_refused(model, length):
    codes = model.encode(wav(), n_q=4)
    with pytest.raises(ValueError, match="length must be"):
        model.decode(codes, length=length)


@pytest.mark.parametrize("cfg", [TINY, LOWBAND], ids=["seanet", "spectral"])
def test_the_codes_of_no_audio_decode_to_no_audio(cfg):
    model = make_model(cfg)
    codes = model.encode(torch.zeros(1, 2, 0), n_q=4)
    assert codes.shape == (1, 2, 4, 0)
    assert model.decode(codes).shape == (1, 2, 0)


def test_low_band_words_out_of_range_are_refused():
    """The levels' range the quantizer checks; the words' this."""
    band = make_model(LOWBAND)
    codes = band.encode(torch.from_numpy(tone(0.1, LOWBAND.sample_rate)).float()[None], n_q=16)  # 8 levels + 8 words
    codes[0, 0, 12, 2] = 1 << LOWBAND.bits_per_code
    with pytest.raises(ValueError, match="codes must be in 0..1023"):
        band.decode(codes)


def test_a_second_stream_or_another_thread_is_refused_while_a_stream_is_open(model):
    x = wav(0.2)
    offline = model.encode(x, n_q=4)
    caught: list[BaseException] = []

    def other() -> None:
        try:
            model.encode(x, n_q=4)
        except BaseException as e:  # noqa: BLE001 (kept for the main thread to look at)
            caught.append(e)

    with model.streaming():
        first = model.encode(x[..., :123], n_q=4)
        with pytest.raises(ModelBusyError, match="already streaming"):
            with model.streaming():
                pass
        t = threading.Thread(target=other)
        t.start()
        t.join()
        rest = model.encode(x[..., 123:], n_q=4)
        last = model.flush(1, 1, n_q=4)
    assert len(caught) == 1 and isinstance(caught[0], ModelBusyError) and isinstance(caught[0], CodecError)
    assert torch.equal(torch.cat([first, rest, last], dim=-1), offline)  # the stream went on untouched
    t = threading.Thread(target=other)  # and once it is closed, other threads code offline
    t.start()
    t.join()
    assert len(caught) == 1


def test_a_stream_keeps_its_batch_and_channels(model):
    with model.streaming():
        model.encode(wav(0.05, 2), n_q=4)
        with pytest.raises(ValueError, match="started with B=1, C=2"):
            model.encode(wav(0.05, 1), n_q=4)
        with pytest.raises(ValueError, match="started with B=1, C=2"):
            model.flush(1, 1, n_q=4)
    codes = model.encode(wav(0.05, 2), n_q=4)
    with model.streaming():
        model.decode(codes)
        with pytest.raises(ValueError, match="started with B=1, C=2"):
            model.drain(1, 1)
        assert model.drain(1, 2).shape[:2] == (1, 2)


def test_levels_only_codes_decode_as_levels():
    """Every code a level, none the low band's words."""
    band = make_model(LOWBAND)
    x = torch.from_numpy(tone(0.3, LOWBAND.sample_rate)).float()[None]
    codes = band.encode(x, n_q=16, levels_only=True)  # 16 levels, where 16 codes are 8 levels + 8 words
    plain = make_model(dataclasses.replace(LOWBAND, lowband_levels=()))  # the same weights, no band
    assert torch.equal(band.decode(codes, levels_only=True), plain.decode(codes))
    assert not torch.equal(band.decode(codes), plain.decode(codes))  # (there: 8 levels and 8 words)


def test_a_stream_encoder_codes_one_stream(model):
    audio = tone(0.1, 8000, 1).T.copy()
    enc = StreamEncoder(model, 8000, 1, 16.0)
    with enc:
        enc.push(audio)
        enc.finish()
        with pytest.raises(RuntimeError, match="finished"):
            enc.push(audio)
        with pytest.raises(RuntimeError, match="finished"):
            enc.finish()
    with pytest.raises(RuntimeError, match="one stream"):
        with enc:
            pass
    with pytest.raises(AudioError, match="float samples"):
        with StreamEncoder(model, 8000, 1, 16.0) as other:
            other.push((audio * 32767).astype(np.int16))
    with pytest.raises(CodecError, match="got None"):
        StreamEncoder(model, 8000, 1, None)


def test_an_empty_input_is_named_as_such():
    with pytest.raises(BitstreamError, match="empty input"):
        read_header(io.BytesIO(b""))


def test_a_stream_cannot_open_under_an_offline_call_of_another_thread(model):
    """It would take over the modules' state mid-call: both would come out wrong."""
    x = wav(0.3)
    codes = model.encode(x, n_q=4)
    clean = model.decode(codes)
    inside, release = threading.Event(), threading.Event()
    forward = model.decoder.forward
    results = []

    def slow(*args, **kwargs):
        inside.set()
        release.wait(30)
        return forward(*args, **kwargs)

    model.decoder.forward = slow
    try:
        t = threading.Thread(target=lambda: results.append(model.decode(codes)))
        t.start()
        assert inside.wait(30)
        with pytest.raises(ModelBusyError, match="coding offline in another thread"):
            with model.streaming():
                pass
        release.set()
        t.join()
    finally:
        model.decoder.forward = forward
    assert torch.equal(results[0], clean)
    with model.streaming():  # and once it is done, a stream opens
        model.encode(x, n_q=4)


@pytest.mark.parametrize("layout", ["reversed", "big-endian", "fortran", "read-only"])
def test_numpy_arrays_of_any_layout_code_alike(model, layout):
    x = wav().numpy()
    a = {"reversed": lambda: x[..., ::-1].copy()[..., ::-1], "big-endian": lambda: x.astype(">f4"),
         "fortran": lambda: np.asfortranarray(x), "read-only": lambda: np.require(x, requirements=["C"])}[layout]()
    if layout == "read-only":
        a = a.copy()
        a.setflags(write=False)
    assert torch.equal(model.encode(a, n_q=4), model.encode(torch.from_numpy(x), n_q=4))
