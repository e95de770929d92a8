"""Tests for exchange.dicomweb.render (pure Python, pydicom's bundled test files)."""
import io
import shutil

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import generate_frames
from pydicom.uid import (
    ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000,
    JPEG2000Lossless, JPEGBaseline8Bit, JPEGExtended12Bit, JPEGLSLossless, RLELossless,
    generate_uid,
)

from exchange.dicomweb import render as R
from exchange.dicomweb.render import (
    RenderError, Window, apply_window, decode_frame, frame_media_type, parse_viewport,
    parse_window, read_frame_bytes, render,
)


def data_file(name, ts=None):
    path = get_testdata_file(name)
    assert path is not None, name
    if ts is not None:  # prove the file really uses the transfer syntax the test claims
        assert pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
    return path


def open_image(data, fmt):
    img = Image.open(io.BytesIO(data))
    assert img.format == fmt
    img.load()
    return img


# --- native frames -------------------------------------------------------------------------

def test_read_frame_native_single_frame():
    path = data_file('CT_small.dcm', ExplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    data, ts = read_frame_bytes(path, 1)
    assert ts == ExplicitVRLittleEndian
    assert len(data) == 128 * 128 * 2
    assert data == ds.PixelData[:len(data)]


def test_read_frame_native_multi_frame():
    path = data_file('rtdose.dcm', ImplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    assert int(ds.NumberOfFrames) == 15
    n = ds.Rows * ds.Columns * ds.SamplesPerPixel * ds.BitsAllocated // 8
    for frame in (1, 3, 15):
        data, ts = read_frame_bytes(path, frame)
        assert ts == ImplicitVRLittleEndian
        assert data == ds.PixelData[(frame - 1) * n:frame * n]
    # the frame matches what pydicom decodes for that frame
    expected = ds.pixel_array[2].astype('<u4').tobytes()
    assert read_frame_bytes(path, 3)[0] == expected


def test_read_frame_with_known_pixel_data_offset():
    path = data_file('rtdose.dcm')
    offset = pydicom.dcmread(path, defer_size=256)._dict[0x7FE00010].value_tell
    assert read_frame_bytes(path, 4, pixel_data_offset=offset) == read_frame_bytes(path, 4)
    enc = data_file('SC_rgb_rle_2frame.dcm')
    offset = pydicom.dcmread(enc, defer_size=256)._dict[0x7FE00010].value_tell
    assert read_frame_bytes(enc, 2, pixel_data_offset=offset) == read_frame_bytes(enc, 2)
    with pytest.raises(RenderError):
        read_frame_bytes(path, 1, pixel_data_offset=-5)
    with pytest.raises(RenderError):  # wrong offset into encapsulated data -> generic error
        read_frame_bytes(enc, 1, pixel_data_offset=0)


def test_read_frame_native_big_endian_returned_as_stored():
    path = data_file('MR_small_bigendian.dcm', ExplicitVRBigEndian)
    data, ts = read_frame_bytes(path, 1)
    assert ts == ExplicitVRBigEndian
    assert data == pydicom.dcmread(path).PixelData


def test_read_frame_native_ybr_full_422():
    path = data_file('SC_ybr_full_422_uncompressed.dcm', ExplicitVRLittleEndian)
    ds = pydicom.dcmread(path)
    data, _ = read_frame_bytes(path, 1)
    assert len(data) == ds.Rows * ds.Columns * 2  # two samples per pixel on average
    assert data == ds.PixelData[:len(data)]


def _write_1bit_multiframe(path, frames):
    """3x3 single-bit frames: 9 bits per frame, so frames 2.. do not start on a byte."""
    from pydicom.pixels import pack_bits
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = '1.2.840.10008.5.1.4.1.1.7'
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.SOPClassUID = '1.2.840.10008.5.1.4.1.1.7'
    ds.Rows = ds.Columns = 3
    ds.NumberOfFrames = len(frames)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, 'MONOCHROME2'
    ds.BitsAllocated = ds.BitsStored = 1
    ds.HighBit, ds.PixelRepresentation = 0, 0
    ds.PixelData = pack_bits(np.stack(frames))
    ds['PixelData'].VR = 'OB'
    ds.save_as(path, enforce_file_format=True)


def test_read_frame_native_one_bit_unaligned(tmp_path):
    rng = np.random.default_rng(1)
    frames = [rng.integers(0, 2, (3, 3), dtype=np.uint8) for _ in range(4)]
    path = str(tmp_path / 'bits.dcm')
    _write_1bit_multiframe(path, frames)
    for i, frame in enumerate(frames, start=1):
        data, _ = read_frame_bytes(path, i)
        assert len(data) == 2
        bits = np.unpackbits(np.frombuffer(data, np.uint8), bitorder='little')[:9]
        assert np.array_equal(bits.reshape(3, 3), frame)
    png = open_image(render(path, 2, media_type='image/png'), 'PNG')
    assert png.size == (3, 3)


# --- encapsulated frames -------------------------------------------------------------------

ENCAPSULATED = [
    ('JPEG2000.dcm', JPEG2000),
    ('MR_small_jp2klossless.dcm', JPEG2000Lossless),
    ('MR_small_RLE.dcm', RLELossless),
    ('JPEG-lossy.dcm', JPEGExtended12Bit),
    ('SC_rgb_jpeg_dcmtk.dcm', JPEGBaseline8Bit),
    ('MR_small_jpeg_ls_lossless.dcm', JPEGLSLossless),
    ('SC_rgb_rle_2frame.dcm', RLELossless),
    ('examples_ybr_color.dcm', JPEGBaseline8Bit),  # 30 frames
    ('rtdose_rle.dcm', RLELossless),  # 15 frames
]


@pytest.mark.parametrize('name,ts', ENCAPSULATED)
def test_read_frame_encapsulated(name, ts):
    path = data_file(name, ts)
    ds = pydicom.dcmread(path)
    n_frames = int(ds.get('NumberOfFrames') or 1)
    expected = list(generate_frames(ds.PixelData, number_of_frames=n_frames))
    assert len(expected) == n_frames
    for frame in sorted({1, 2, n_frames} & set(range(1, n_frames + 1))):
        data, got_ts = read_frame_bytes(path, frame)
        assert got_ts == ts
        assert data == expected[frame - 1]


def test_frame_out_of_range():
    single = data_file('CT_small.dcm')
    multi = data_file('SC_rgb_rle_2frame.dcm', RLELossless)
    for fn in (read_frame_bytes, decode_frame, render):
        for path, bad in ((single, 0), (single, 2), (multi, 3), (multi, -1)):
            with pytest.raises(RenderError, match='frame number out of range'):
                fn(path, bad)
        with pytest.raises(RenderError):
            fn(single, '1')
        with pytest.raises(RenderError):
            fn(single, True)


def test_errors_are_generic(tmp_path):
    bad = tmp_path / 'not-dicom.dcm'
    bad.write_bytes(b'PatientName=DOE^JOHN' * 20)
    for fn in (read_frame_bytes, decode_frame, render):
        with pytest.raises(RenderError) as exc:
            fn(str(bad), 1)
        assert 'DOE' not in str(exc.value)
    with pytest.raises(RenderError):
        read_frame_bytes(str(tmp_path / 'missing.dcm'), 1)


def test_corrupt_compressed_frame_raises_render_error(tmp_path):
    src = data_file('JPEG2000.dcm', JPEG2000)
    ds = pydicom.dcmread(src)
    frame = next(generate_frames(ds.PixelData, number_of_frames=1))
    ds.PixelData = pydicom.encaps.encapsulate([frame[:20] + b'\x00' * 200])
    path = str(tmp_path / 'corrupt.dcm')
    ds.save_as(path)
    with pytest.raises(RenderError, match='^cannot decode frame$'):
        render(path)


# --- decode_frame ---------------------------------------------------------------------------

@pytest.mark.parametrize('name,ts', [
    ('MR_small_RLE.dcm', RLELossless),
    ('MR_small_jpeg_ls_lossless.dcm', JPEGLSLossless),
    ('MR_small_jp2klossless.dcm', JPEG2000Lossless),
])
def test_decode_frame_lossless_equals_original(name, ts):
    original = pydicom.dcmread(data_file('MR_small.dcm', ExplicitVRLittleEndian)).PixelData
    assert decode_frame(data_file(name, ts), 1) == original


def test_decode_frame_multiframe_rle_equals_native():
    rle = data_file('rtdose_rle.dcm', RLELossless)
    native = data_file('rtdose.dcm', ImplicitVRLittleEndian)
    assert decode_frame(rle, 7) == read_frame_bytes(native, 7)[0]


def test_decode_frame_native():
    path = data_file('CT_small.dcm')
    assert decode_frame(path, 1) == read_frame_bytes(path, 1)[0]


# --- rendering ------------------------------------------------------------------------------

def test_render_ct_png_size_and_window_effect():
    path = data_file('CT_small.dcm', ExplicitVRLittleEndian)
    default = np.asarray(open_image(render(path, media_type='image/png'), 'PNG'))
    assert default.shape == (128, 128) and default.dtype == np.uint8
    wide = np.asarray(open_image(render(path, window=Window(40, 4000), media_type='image/png'), 'PNG'))
    narrow = np.asarray(open_image(render(path, window=Window(40, 20), media_type='image/png'), 'PNG'))

    def saturated(a):
        return int(np.count_nonzero((a == 0) | (a == 255)))

    assert saturated(narrow) > saturated(wide)
    assert not np.array_equal(wide, narrow)
    # default (no window in file) uses min/max: full range used
    assert default.min() == 0 and default.max() == 255


def test_render_uses_file_window():
    path = data_file('MR_small.dcm')
    ds = pydicom.dcmread(path)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (600.0, 1600.0)
    from_file = render(path, media_type='image/png')
    explicit = render(path, window=Window(600, 1600), media_type='image/png')
    other = render(path, window=Window(300, 200), media_type='image/png')
    assert np.array_equal(np.asarray(open_image(from_file, 'PNG')), np.asarray(open_image(explicit, 'PNG')))
    assert not np.array_equal(np.asarray(open_image(from_file, 'PNG')), np.asarray(open_image(other, 'PNG')))


def test_render_ct_window_matches_formula():
    path = data_file('CT_small.dcm')
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    win = Window(40, 400)
    expected = np.clip(np.rint(apply_window(hu, win)), 0, 255).astype(np.uint8)
    got = np.asarray(open_image(render(path, window=win, media_type='image/png'), 'PNG'))
    assert np.array_equal(got, expected)


@pytest.mark.parametrize('name,ts,mode,size', [
    ('SC_rgb_jpeg_dcmtk.dcm', JPEGBaseline8Bit, 'RGB', (100, 100)),
    ('JPGExtended.dcm', JPEGExtended12Bit, 'L', (256, 1024)),  # JPEG-lossy.dcm: libjpeg rejects it
    ('SC_rgb_jpeg_gdcm.dcm', '1.2.840.10008.1.2.4.70', 'RGB', (100, 100)),
    ('MR_small_jpeg_ls_lossless.dcm', JPEGLSLossless, 'L', (64, 64)),
    ('JPEG2000.dcm', JPEG2000, 'L', (256, 1024)),
    ('MR_small_RLE.dcm', RLELossless, 'L', (64, 64)),
    ('SC_rgb_rle_2frame.dcm', RLELossless, 'RGB', (100, 100)),
    ('SC_rgb_rle_16bit.dcm', RLELossless, 'RGB', (100, 100)),
    ('examples_palette.dcm', ExplicitVRLittleEndian, 'RGB', (800, 350)),
])
@pytest.mark.parametrize('media_type,fmt', [('image/jpeg', 'JPEG'), ('image/png', 'PNG')])
def test_render_compressed_decodable(name, ts, mode, size, media_type, fmt):
    path = data_file(name, ts)
    img = open_image(render(path, 1, media_type=media_type, quality=80), fmt)
    assert img.mode == mode
    assert img.size == size
    assert np.asarray(img).std() > 0  # not a blank image


def test_render_multiframe_jpeg_baseline():
    path = data_file('examples_ybr_color.dcm', JPEGBaseline8Bit)
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    assert ds.PhotometricInterpretation == 'YBR_FULL_422' and int(ds.NumberOfFrames) == 30
    a = np.asarray(open_image(render(path, 10, media_type='image/png'), 'PNG'))
    b = np.asarray(open_image(render(path, 30, media_type='image/png'), 'PNG'))
    assert a.shape == (240, 320, 3) and not np.array_equal(a, b)


def test_render_rgb_frames_differ_and_match_colour():
    path = data_file('SC_rgb_rle_2frame.dcm', RLELossless)
    ds = pydicom.dcmread(path)
    f1 = np.asarray(open_image(render(path, 1, media_type='image/png'), 'PNG'))
    f2 = np.asarray(open_image(render(path, 2, media_type='image/png'), 'PNG'))
    assert np.array_equal(f1, ds.pixel_array[0])
    assert np.array_equal(f2, ds.pixel_array[1])


def test_render_jpeg_baseline_ybr_is_converted_to_rgb():
    path = data_file('SC_rgb_jpeg_dcmtk.dcm', JPEGBaseline8Bit)
    img = np.asarray(open_image(render(path, media_type='image/png'), 'PNG')).astype(int)
    # top-left block of this test image is red
    assert img[5, 5, 0] > 200 and img[5, 5, 1] < 50 and img[5, 5, 2] < 50


def test_render_viewport_keeps_aspect_ratio():
    path = data_file('JPEG2000.dcm')  # 256 wide x 1024 high
    assert open_image(render(path, viewport=(100, 100)), 'JPEG').size == (25, 100)
    assert open_image(render(path, viewport=(512, 4096)), 'JPEG').size == (512, 2048)
    ct = data_file('CT_small.dcm')
    assert open_image(render(ct, viewport=(64, 32), media_type='image/png'), 'PNG').size == (32, 32)
    for bad in ((0, 10), (10, 5000), (10,), (10.0, 10)):
        with pytest.raises(RenderError):
            render(ct, viewport=bad)


def test_render_monochrome1_inverts(tmp_path):
    src = data_file('MR_small.dcm')
    ds = pydicom.dcmread(src)
    assert ds.PhotometricInterpretation == 'MONOCHROME2'
    ds.PhotometricInterpretation = 'MONOCHROME1'
    inverted = str(tmp_path / 'mono1.dcm')
    ds.save_as(inverted)
    for window in (None, Window(600, 1600), Window(500, 300, 'SIGMOID')):
        m2 = np.asarray(open_image(render(src, window=window, media_type='image/png'), 'PNG')).astype(int)
        m1 = np.asarray(open_image(render(inverted, window=window, media_type='image/png'), 'PNG')).astype(int)
        assert np.array_equal(m1, 255 - m2)


def test_render_bad_media_type_and_quality():
    path = data_file('CT_small.dcm')
    for mt in ('image/gif', 'application/dicom', '', 'text/html'):
        with pytest.raises(RenderError):
            render(path, media_type=mt)
    for q in (0, 101, 50.5, None):
        with pytest.raises(RenderError):
            render(path, quality=q)
    assert render(path, quality=1)[:2] == b'\xff\xd8'
    assert render(path, quality=100)[:2] == b'\xff\xd8'
    assert set(R.SUPPORTED_RENDER_TYPES) == {'image/jpeg', 'image/png'}


# --- windowing formula (PS3.3 C.11.2.1.2) -----------------------------------------------------

def test_apply_window_linear_edges():
    w = Window(40, 400)
    x = np.array([-1000, -160.5, -160, -159.5, 39.5, 239, 239.5, 239.0001, 3000], dtype=float)
    y = apply_window(x, w)
    assert y[0] == 0 and y[1] == 0 and y[2] == 0
    assert 0 < y[3] < 1
    assert y[4] == pytest.approx(127.5)
    assert y[5] == pytest.approx(255)
    assert y[6] == 255 and y[7] == 255 and y[8] == 255
    assert np.all(np.diff(y) >= 0)


def test_apply_window_standard_example():
    # PS3.3 C.11.2.1.2.1 example: c=2048, w=4096 -> x<=0 -> 0, x>4095 -> 255
    y = apply_window(np.array([0, 1, 2047.5, 4095, 4096]), Window(2048, 4096))
    assert y[0] == 0 and y[1] > 0 and y[2] == pytest.approx(127.5) and y[3] == pytest.approx(255)
    assert y[4] == 255


def test_apply_window_linear_exact_and_sigmoid():
    y = apply_window(np.array([-160, -159.9, 40, 240, 240.1]), Window(40, 400, 'LINEAR_EXACT'))
    assert y[0] == 0 and y[1] > 0 and y[2] == pytest.approx(127.5) and y[3] == pytest.approx(255)
    assert y[4] == 255
    s = apply_window(np.array([-1e6, 40, 1e6]), Window(40, 400, 'SIGMOID'))
    assert s[0] == pytest.approx(0) and s[1] == pytest.approx(127.5) and s[2] == pytest.approx(255)
    custom = apply_window(np.array([-1e6, 39.5, 1e6]), Window(40, 400), ymin=10, ymax=20)
    assert list(custom) == [10, pytest.approx(15), 20]


def test_apply_window_width_one():
    y = apply_window(np.array([39, 39.5, 40, 41]), Window(40, 1))
    assert list(y) == [0, 0, 255, 255]


# --- query parameters -------------------------------------------------------------------------

def test_parse_window():
    assert parse_window(None) is None
    assert parse_window('') is None
    assert parse_window('40,400') == Window(40.0, 400.0, 'LINEAR')
    assert parse_window(' -600.5 , 1500 ') == Window(-600.5, 1500.0)
    assert parse_window('40,400,linear-exact') == Window(40, 400, 'LINEAR_EXACT')
    assert parse_window('40,400,SIGMOID') == Window(40, 400, 'SIGMOID')
    assert parse_window('40,0.5,sigmoid').width == 0.5


@pytest.mark.parametrize('bad', [
    '40', '40,', ',400', 'a,b', '40,400,cubic', '40,400,linear,1', '40,0', '40,-5', '40,0.5',
    '40,0,sigmoid', 'nan,400', '40,inf', '1e999,400',
])
def test_parse_window_errors(bad):
    with pytest.raises(RenderError):
        parse_window(bad)


def test_parse_viewport():
    assert parse_viewport(None) is None
    assert parse_viewport('') is None
    assert parse_viewport('512,256') == (512, 256)
    assert parse_viewport(' 1 , 4096 ') == (1, 4096)
    assert parse_viewport('512,512,0,0,100,100') == (512, 512)


@pytest.mark.parametrize('bad', [
    '512', '512,', 'a,b', '0,10', '10,0', '-1,10', '4097,10', '10,4097', '10.5,10', '1,2,3',
])
def test_parse_viewport_errors(bad):
    with pytest.raises(RenderError):
        parse_viewport(bad)


def test_window_validation():
    assert Window(40, 400) == Window(40.0, 400.0)
    assert isinstance(Window(40, 400).center, float)
    with pytest.raises(RenderError):
        Window('x', 400)
    with pytest.raises(RenderError):
        Window(40, 400, 'cubic')
    with pytest.raises(RenderError):
        Window(40, 0.5)
    assert isinstance(RenderError('x'), ValueError)


# --- media types (PS3.18 Table 8.7.3-2 / 8.7.3-5) -----------------------------------------------

@pytest.mark.parametrize('ts,expected', [
    (JPEGBaseline8Bit, 'image/jpeg'),
    (JPEGExtended12Bit, 'image/jpeg'),
    ('1.2.840.10008.1.2.4.57', 'image/jpeg'),
    ('1.2.840.10008.1.2.4.70', 'image/jpeg'),
    (JPEGLSLossless, 'image/jls'),
    ('1.2.840.10008.1.2.4.81', 'image/jls'),
    (JPEG2000Lossless, 'image/jp2'),
    (JPEG2000, 'image/jp2'),
    (RLELossless, 'image/dicom-rle'),
    (ExplicitVRLittleEndian, 'application/octet-stream'),
    (ImplicitVRLittleEndian, 'application/octet-stream'),
    (ExplicitVRBigEndian, 'application/octet-stream'),
])
def test_frame_media_type(ts, expected):
    assert frame_media_type(ts) == expected
    assert frame_media_type(str(ts)) == expected


def test_read_frame_and_media_type_together():
    path = data_file('MR_small_jpeg_ls_lossless.dcm', JPEGLSLossless)
    data, ts = read_frame_bytes(path, 1)
    assert frame_media_type(ts) == 'image/jls'
    assert data[:2] == b'\xff\xd8'  # JPEG-LS SOI


def test_render_works_on_copy_outside_package(tmp_path):
    dst = tmp_path / 'copy.dcm'
    shutil.copy(data_file('JPEG2000.dcm'), dst)
    assert open_image(render(str(dst), media_type='image/png'), 'PNG').size == (256, 1024)


def test_read_frame_native_reads_only_one_frame(monkeypatch, tmp_path):
    """The native path seeks to the frame: it never reads the whole Pixel Data value."""
    path = data_file('rtdose.dcm')
    ds = pydicom.dcmread(path)
    frame_len = ds.Rows * ds.Columns * ds.BitsAllocated // 8
    total = {'n': 0}
    real_open = open

    class Counting:
        def __init__(self, f):
            self._f = f

        def read(self, n=-1):
            data = self._f.read(n)
            total['n'] += len(data)
            return data

        def __getattr__(self, name):
            return getattr(self._f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._f.close()

    monkeypatch.setattr(R, 'open', lambda p, mode='r': Counting(real_open(p, mode)), raising=False)
    data, _ = read_frame_bytes(path, 15)
    assert data == ds.PixelData[14 * frame_len:]
    import os
    assert total['n'] <= os.path.getsize(path) - len(ds.PixelData) + frame_len + 64
