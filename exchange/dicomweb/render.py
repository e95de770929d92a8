"""DICOMweb frames (PS3.18 §8.3.3.1, §9.4) and rendered images (PS3.18 §8.3.5, §9.5).

Pure Python (no Django). One frame at a time: native pixel data is read by seeking
to the frame. RenderError messages are generic and never contain values from the file.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
import pydicom
from PIL import Image
from pydicom.encaps import get_frame
from pydicom.pixels import apply_color_lut, apply_modality_lut, pixel_array
from pydicom.uid import UID

SUPPORTED_RENDER_TYPES = ('image/jpeg', 'image/png')
MAX_VIEWPORT = 4096
_WINDOW_FUNCTIONS = ('LINEAR', 'LINEAR_EXACT', 'SIGMOID')
_DEFLATED = '1.2.840.10008.1.2.1.99'
_LONG_VRS = {b'OB', b'OW', b'OF', b'OD', b'OL', b'OV', b'SQ', b'UN', b'UT', b'UC', b'UR', b'SV', b'UV'}


class RenderError(ValueError):
    """Invalid request or undecodable data; the message is safe to return to a client."""


@dataclass(frozen=True)
class Window:
    """VOI window (PS3.3 C.11.2.1.2); ``function`` is LINEAR, LINEAR_EXACT or SIGMOID."""
    center: float
    width: float
    function: str = 'LINEAR'

    def __post_init__(self):
        fn = str(self.function).strip().upper().replace('-', '_')
        if fn not in _WINDOW_FUNCTIONS:
            raise RenderError('unsupported window function')
        try:
            c, w = float(self.center), float(self.width)
        except (TypeError, ValueError):
            raise RenderError('window center and width must be numbers') from None
        if not (math.isfinite(c) and math.isfinite(w)):
            raise RenderError('window center and width must be finite numbers')
        if w < 1 if fn == 'LINEAR' else w <= 0:  # PS3.3 C.11.2.1.2.1: LINEAR needs w >= 1
            raise RenderError('window width out of range')
        for name, value in (('center', c), ('width', w), ('function', fn)):
            object.__setattr__(self, name, value)


def parse_window(param: str | None) -> Window | None:
    """Parse ``window=center,width[,function]`` (PS3.18 §8.3.5.1.3); function is
    ``linear`` (default), ``linear-exact`` or ``sigmoid``, case-insensitive."""
    if param is None or not param.strip():
        return None
    parts = [p.strip() for p in param.split(',')]
    if len(parts) not in (2, 3):
        raise RenderError('window must be "center,width[,function]"')
    try:
        center, width = float(parts[0]), float(parts[1])
    except ValueError:
        raise RenderError('window center and width must be numbers') from None
    return Window(center, width, parts[2] if len(parts) == 3 else 'LINEAR')


def parse_viewport(param: str | None) -> tuple[int, int] | None:
    """Parse ``viewport=vw,vh[,sx,sy,sw,sh]`` (PS3.18 §8.3.5.1.2); only (vw, vh)
    is used, the optional source-region values are ignored."""
    if param is None or not param.strip():
        return None
    parts = [p.strip() for p in param.split(',')]
    if len(parts) not in (2, 6):
        raise RenderError('viewport must be "vw,vh"')
    try:
        vw, vh = int(parts[0]), int(parts[1])
    except ValueError:
        raise RenderError('viewport width and height must be integers') from None
    if not (1 <= vw <= MAX_VIEWPORT and 1 <= vh <= MAX_VIEWPORT):
        raise RenderError(f'viewport width and height must be between 1 and {MAX_VIEWPORT}')
    return vw, vh


_TS_JPEG_FAMILY = '1.2.840.10008.1.2.4.'
_FRAME_TYPES = {
    **dict.fromkeys(('50', '51', '57', '70'), 'image/jpeg'),
    **dict.fromkeys(('80', '81'), 'image/jls'),
    **dict.fromkeys(('90', '91'), 'image/jp2'),
    **dict.fromkeys(('92', '93'), 'image/jpx'),
    **dict.fromkeys(('201', '202', '203'), 'image/jphc'),
    **dict.fromkeys(('110', '111', '112'), 'image/jxl'),
    **dict.fromkeys(('100', '101'), 'video/mpeg'),
    **dict.fromkeys(('102', '103', '104', '105', '106', '107', '108'), 'video/mp4'),
}


def frame_media_type(transfer_syntax_uid: str) -> str:
    """Bulk-data media type of a frame (PS3.18 Table 8.7.3-2 and 8.7.3-5)."""
    uid = str(transfer_syntax_uid).strip()
    if uid == '1.2.840.10008.1.2.5':
        return 'image/dicom-rle'
    if uid.startswith(_TS_JPEG_FAMILY):
        return _FRAME_TYPES.get(uid[len(_TS_JPEG_FAMILY):], 'application/octet-stream')
    return 'application/octet-stream'


def _open(path: str):
    try:
        return open(path, 'rb')
    except OSError as exc:
        raise RenderError('cannot open file') from exc


def _read_header(fp) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(fp, stop_before_pixels=True)
    except Exception as exc:
        raise RenderError('cannot read DICOM header') from exc


def _transfer_syntax(ds) -> str:
    ts = ds.file_meta.get('TransferSyntaxUID') if hasattr(ds, 'file_meta') else None
    if ts:
        return str(ts)
    implicit, little = ds.original_encoding
    return '1.2.840.10008.1.2' if implicit else ('1.2.840.10008.1.2.1' if little else '1.2.840.10008.1.2.2')


def _check_frame(ds, frame_number: int) -> int:
    """Validate a 1-based frame number, return the 0-based index."""
    if isinstance(frame_number, bool) or not isinstance(frame_number, int):
        raise RenderError('frame number must be an integer')
    try:
        n_frames = int(ds.get('NumberOfFrames') or 1)
    except (TypeError, ValueError):
        n_frames = 1
    if not 1 <= frame_number <= max(n_frames, 1):
        raise RenderError('frame number out of range')
    return frame_number - 1


def _pixel_value_offset(fp, little: bool, implicit: bool) -> int:
    """Parse the Pixel Data element header at the current position, return the value offset."""
    start, head = fp.tell(), fp.read(8)
    order = 'little' if little else 'big'
    if len(head) < 8 or (int.from_bytes(head[0:2], order), int.from_bytes(head[2:4], order)) != (0x7FE0, 0x10):
        raise RenderError('no pixel data')
    return start + (12 if not implicit and head[4:6] in _LONG_VRS else 8)


def read_frame_bytes(path: str, frame_number: int, *, pixel_data_offset: int | None = None
                     ) -> tuple[bytes, str]:
    """Return ``(frame_bytes, transfer_syntax_uid)`` for one 1-based frame as stored
    (PS3.18 §8.3.3.1, PS3.5 §8.2 / Annex A.4).

    Native: seek to the frame inside Pixel Data and read its length only
    (BitsAllocated 1 frames are re-aligned to start on a byte boundary, PS3.5 §8.1.1).
    Encapsulated: the frame's fragments via :func:`pydicom.encaps.get_frame`.
    """
    with _open(path) as fp:
        ds = _read_header(fp)
        index = _check_frame(ds, frame_number)
        ts_str = _transfer_syntax(ds)
        ts = UID(ts_str)
        if ts_str == _DEFLATED:  # offsets refer to the inflated stream: rare, read it whole
            try:
                data = pydicom.dcmread(path).PixelData
            except Exception as exc:
                raise RenderError('cannot read pixel data') from exc
            return _slice_native(ds, data, index), ts_str
        implicit, little = ds.original_encoding if not ts.is_transfer_syntax else (
            ts.is_implicit_VR, ts.is_little_endian)
        if pixel_data_offset is None:
            pixel_data_offset = _pixel_value_offset(fp, little, implicit)
        elif isinstance(pixel_data_offset, bool) or not isinstance(pixel_data_offset, int) \
                or pixel_data_offset < 0:
            raise RenderError('invalid pixel data offset')
        fp.seek(pixel_data_offset)
        if ts.is_transfer_syntax and ts.is_encapsulated:
            ext = None
            if 'ExtendedOffsetTable' in ds and 'ExtendedOffsetTableLengths' in ds:
                ext = (ds.ExtendedOffsetTable, ds.ExtendedOffsetTableLengths)
            try:
                frame = get_frame(fp, index, extended_offsets=ext,
                                  number_of_frames=int(ds.get('NumberOfFrames') or 1))
            except Exception as exc:
                raise RenderError('cannot locate frame in encapsulated pixel data') from exc
            if not frame:
                raise RenderError('cannot locate frame in encapsulated pixel data')
            return frame, ts_str
        return _slice_native(ds, fp, index), ts_str


def _slice_native(ds, src, index: int) -> bytes:
    """Frame ``index`` of native pixel data; ``src`` is bytes or a file positioned at the value."""
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        spp, bits = int(ds.get('SamplesPerPixel') or 1), int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        raise RenderError('missing or invalid image pixel attributes') from None
    if rows < 1 or cols < 1 or spp < 1 or bits < 1 or (bits != 1 and bits % 8):
        raise RenderError('missing or invalid image pixel attributes')
    if spp == 3 and str(ds.get('PhotometricInterpretation', '')).strip() == 'YBR_FULL_422':
        spp = 2  # PS3.3 C.7.6.3.1.2: Y Y Cb Cr per two pixels
    frame_bits = rows * cols * spp * bits
    start_bit = index * frame_bits
    first, shift = divmod(start_bit, 8)
    n_bytes = (shift + frame_bits + 7) // 8
    if isinstance(src, (bytes, bytearray)):
        data = bytes(src[first:first + n_bytes])
    else:
        src.seek(first, 1)
        data = src.read(n_bytes)
    if len(data) < n_bytes:
        raise RenderError('pixel data is truncated')
    if shift == 0 and frame_bits % 8 == 0:
        return data
    bits_arr = np.unpackbits(np.frombuffer(data, np.uint8), bitorder='little')
    return np.packbits(bits_arr[shift:shift + frame_bits], bitorder='little').tobytes()


def _decode(path: str, index: int, raw: bool = False) -> np.ndarray:
    try:
        return pixel_array(path, index=index, raw=raw)
    except Exception as exc:
        raise RenderError('cannot decode frame') from exc


def decode_frame(path: str, frame_number: int) -> bytes:
    """One frame decompressed to native little-endian bytes (PS3.18 §8.7.3.3.2 / PS3.5 §8.2).

    Colour frames are returned as interleaved RGB (YBR is converted, planar
    configuration 0); BitsAllocated 1 frames come back as one byte per pixel.
    """
    with _open(path) as fp:
        index = _check_frame(_read_header(fp), frame_number)
    arr = _decode(path, index)
    return np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder('<')).tobytes()


def apply_window(arr, window: Window, ymin: float = 0, ymax: float = 255) -> np.ndarray:
    """Apply a VOI window (PS3.3 C.11.2.1.2.1 LINEAR, .3.2 LINEAR_EXACT, .3.1 SIGMOID);
    returns float64 in [ymin, ymax]."""
    x = np.asarray(arr, dtype=np.float64)
    c, w, span = float(window.center), float(window.width), float(ymax - ymin)
    if window.function == 'SIGMOID':
        with np.errstate(over='ignore'):
            return span / (1.0 + np.exp(-4.0 * (x - c) / w)) + ymin
    if window.function == 'LINEAR_EXACT':
        lo, hi = c - w / 2, c + w / 2
        y = ((x - c) / w + 0.5) * span + ymin
    else:
        lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
        y = ((x - (c - 0.5)) / (w - 1) + 0.5) * span + ymin if w > 1 else np.full_like(x, ymax)
    return np.where(x <= lo, float(ymin), np.where(x > hi, float(ymax), y))


def _frame_item(ds, index: int, seq: str):
    """First item of ``seq`` in the per-frame or shared functional groups (PS3.3 C.7.6.16)."""
    for groups, i in (('PerFrameFunctionalGroupsSequence', index), ('SharedFunctionalGroupsSequence', 0)):
        try:
            item = getattr(ds, groups)[i]
            return getattr(item, seq)[0]
        except (AttributeError, IndexError, TypeError):
            continue
    return None


def _first(value) -> float:
    return float(value[0] if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else value)


def _to_gray8(arr: np.ndarray, ds, index: int, window: Window | None) -> np.ndarray:
    if 'ModalityLUTSequence' in ds or 'RescaleSlope' in ds:
        values = apply_modality_lut(arr, ds)
    elif (item := _frame_item(ds, index, 'PixelValueTransformationSequence')) is not None \
            and 'RescaleSlope' in item:
        values = arr * float(item.RescaleSlope) + float(item.get('RescaleIntercept') or 0)
    else:
        values = arr
    values = np.asarray(values, dtype=np.float64)
    if window is None:
        src = ds if 'WindowCenter' in ds else _frame_item(ds, index, 'FrameVOILUTSequence')
        if src is not None and src.get('WindowCenter') is not None and src.get('WindowWidth') is not None:
            fn = str(src.get('VOILUTFunction') or 'LINEAR')
            try:
                window = Window(_first(src.WindowCenter), _first(src.WindowWidth), fn)
            except (RenderError, TypeError, ValueError):
                window = None
    if window is None:
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
        window = Window(lo + (hi - lo + 1) / 2, max(hi - lo + 1, 1.0), 'LINEAR')  # covers [lo, hi]
    out = np.clip(np.rint(apply_window(values, window)), 0, 255).astype(np.uint8)
    if str(ds.get('PhotometricInterpretation', '')).strip() == 'MONOCHROME1':
        out = 255 - out  # PS3.3 C.7.6.3.1.2: minimum value displayed white
    return out


def _to_rgb8(arr: np.ndarray, ds) -> np.ndarray:
    if str(ds.get('PhotometricInterpretation', '')).strip() == 'PALETTE COLOR':
        arr = apply_color_lut(arr, ds)  # PS3.3 C.7.6.3.1.5
        depth = 16 if arr.dtype.itemsize > 1 else 8
    else:
        depth = int(ds.get('BitsStored') or ds.get('BitsAllocated') or 8)
    if depth > 8:
        arr = np.asarray(arr, dtype=np.float64) * (255.0 / (2 ** depth - 1))
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


def render(path: str, frame_number: int = 1, *, window: Window | None = None,
           viewport: tuple[int, int] | None = None, media_type: str = 'image/jpeg',
           quality: int = 90) -> bytes:
    """Rendered frame (PS3.18 §8.3.5, §9.5) as JPEG or PNG, 8 bits per sample.

    Grayscale: Modality LUT (PS3.3 C.11.1), then VOI window (``window``, else the
    first WindowCenter/WindowWidth, else frame min/max; PS3.3 C.11.2.1.2);
    MONOCHROME1 is inverted. Colour: RGB scaled to 8 bits. ``viewport`` fits the
    image inside (vw, vh) preserving aspect ratio (PS3.18 §8.3.5.1.2).
    """
    media_type = (media_type or '').split(';')[0].strip().lower()
    if viewport is not None and not (
            len(viewport) == 2 and all(isinstance(v, int) and 1 <= v <= MAX_VIEWPORT for v in viewport)):
        raise RenderError('invalid viewport')
    if media_type not in SUPPORTED_RENDER_TYPES:
        raise RenderError('unsupported rendered media type')
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise RenderError('quality must be an integer between 1 and 100')
    with _open(path) as fp:
        ds = _read_header(fp)
    index = _check_frame(ds, frame_number)
    arr = _decode(path, index)
    try:
        if arr.ndim == 2 and str(ds.get('PhotometricInterpretation', '')).strip() != 'PALETTE COLOR':
            img = Image.fromarray(_to_gray8(arr, ds, index, window))
        elif arr.ndim in (2, 3):
            rgb = _to_rgb8(arr, ds)
            if rgb.ndim != 3 or rgb.shape[2] != 3:
                raise RenderError('unsupported pixel layout')
            img = Image.fromarray(rgb)
        else:
            raise RenderError('unsupported pixel layout')
        if viewport is not None:
            vw, vh = viewport
            scale = min(vw / img.width, vh / img.height)
            size = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
            if size != img.size:
                img = img.resize(size, Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, **({'format': 'PNG'} if media_type == 'image/png' else {'format': 'JPEG', 'quality': quality}))
        return out.getvalue()
    except RenderError:
        raise
    except Exception as exc:
        raise RenderError('cannot render frame') from exc
