"""Pixel-space near-copy matching: is this test image a shifted, noisy, recoloured or recompressed
copy of that upstream image?

A classifier's pre-logits are trained to call two images of one class "the same", which is the
opposite of what duplicate detection needs: two different pictures of a red circle on grass sit
closer together than a picture and its JPEG copy (``bench/README.md`` has the numbers). This
module compares the pictures themselves, in two steps that scale like the model search does:

- **retrieval signatures** (:func:`signatures`): the centre of each image (less a border of
  ``MAX_SHIFT`` pixels) becomes an 8x8-per-channel thumbnail (blurred, each channel's mean
  removed and scaled to unit norm, so a colour cast or a change of brightness does not matter),
  L2-normalised, so a dot product is a correlation. Test images are signed at every shift of up
  to ``MAX_SHIFT`` pixels (:func:`shifted_signatures`, windows cut from the picture rather than
  the picture moved with replicated edges), and a pair's retrieval score is the best over
  shifts, so a copy that moved by a few pixels lines up exactly with its original.
- **verification** (:func:`verify`) of the few candidates each test image retrieves, on 32x32
  images. The pair is aligned at the shift where the band-passed luminance (a difference of
  Gaussians at 1 and 3 pixels: shapes, edges and textures, without sensor noise, JPEG blocking
  and smooth backgrounds) agrees best. The *detail* score is the worst agreement of that
  band-passed luminance in local windows (SSIM's contrast-structure term, with a floor below
  which differences are too faint to count), so one small object present in only one picture
  fails the pair. The *colour error* is the RMS difference of the blurred colours after the
  best per-channel gain in ``GAIN`` (a copy may be recoloured a little, a different object is
  not). The **pixel score** is ``min(detail, 1 - 2 * colour_error)``: at 0.95 the details agree
  at 0.95 or more everywhere *and* the colours agree within 2.5% RMS.

Every image is resized to ``SIZE`` x ``SIZE`` first (area average), so copies at another
resolution compare as equals, and the score has one meaning for every model, dataset and image
size. Everything is torch, on the device the images are on.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn.functional as F

SIZE = 32              # pictures are compared at 32 x 32
MAX_SHIFT = 3          # pixels at SIZE (about 10% of the side) a copy may be moved or cropped by
SIGNATURE = 8          # retrieval thumbnails are SIGNATURE x SIGNATURE per channel
SIGNATURE_BLUR = 1.0   # Gaussian sigma (pixels at SIZE) before the thumbnail is pooled
DETAIL_BAND = (1.0, 3.0)  # difference of Gaussians: sigmas of the band kept for the detail score
DETAIL_WINDOW = 4.0    # Gaussian window (sigma, pixels) of the local detail agreement
DETAIL_FLOOR = 0.05    # band-passed luminance differences below this (per pixel) do not count
COLOUR_WEIGHT = 2.0    # score = min(detail, 1 - COLOUR_WEIGHT * colour error)
COLOUR_BLUR = 2.0      # colours are compared blurred: JPEG halves colour resolution
GAIN = (0.75, 1.33)    # per-channel gains a recoloured copy may carry (one is 1 / the other)
LUMA = (0.299, 0.587, 0.114)  # ITU-R BT.601, as JPEG's own luminance


def thumbnails(images: torch.Tensor) -> torch.Tensor:
    """Images (B, 3, H, W) -> uint8 (B, 3, SIZE, SIZE), the pictures every score compares.

    uint8 images are read as 0..255; float images as bitkit's model input range [-1, 1]
    (``bitkit.data.preprocess``). Other sizes are area-resized (copies at another resolution
    compare as equals). uint8 keeps a stored thumbnail at 3 KB an image.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W) RGB; got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        x = images.float() / 255.0
    else:
        x = ((images.float() + 1.0) / 2.0).clamp(0.0, 1.0)
    if x.shape[-2:] != (SIZE, SIZE):
        x = F.interpolate(x, size=(SIZE, SIZE), mode="area")
    return (x * 255.0).round().to(torch.uint8)


def _unit(thumbs: torch.Tensor) -> torch.Tensor:
    """uint8 thumbnails -> float32 in [0, 1]."""
    if thumbs.dtype != torch.uint8 or thumbs.shape[1:] != (3, SIZE, SIZE):
        raise ValueError(f"expected uint8 thumbnails (B, 3, {SIZE}, {SIZE}) from thumbnails(); "
                         f"got {thumbs.dtype} {tuple(thumbs.shape)}")
    return thumbs.float() / 255.0


@lru_cache(maxsize=64)
def _blur_matrix(n: int, sigma: float, device: str, dtype: torch.dtype) -> torch.Tensor:
    """(n, n) matrix of a 1-D Gaussian blur with replicated edges: ``M @ x`` blurs columns."""
    r = int(3 * sigma + 0.5)
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-t * t / (2 * sigma * sigma))
    k = k / k.sum()
    m = torch.zeros(n, n, dtype=torch.float64)
    rows = torch.arange(n)[:, None].expand(n, 2 * r + 1)
    cols = (torch.arange(n)[:, None] + t.long()[None, :]).clamp(0, n - 1)
    m.index_put_((rows.reshape(-1), cols.reshape(-1)), k.repeat(n), accumulate=True)
    return m.to(device=device, dtype=dtype)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (..., H, W) with replicated edges. The pictures are small,
    so each pass is a matrix product (far faster than a convolution on 32-pixel images)."""
    if sigma <= 0:
        return x
    h, w = x.shape[-2:]
    mh = _blur_matrix(h, float(sigma), str(x.device), x.dtype)
    mw = mh if w == h else _blur_matrix(w, float(sigma), str(x.device), x.dtype)
    return mh @ x @ mw.T


SHIFTS = tuple((dy, dx) for dy in range(-MAX_SHIFT, MAX_SHIFT + 1)
               for dx in range(-MAX_SHIFT, MAX_SHIFT + 1))


def signatures(thumbs: torch.Tensor) -> torch.Tensor:
    """Retrieval signatures (B, 3 * SIGNATURE**2), unit norm: the dot product of two is the
    correlation of their blurred, per-channel-normalised centres (the picture less a border
    of MAX_SHIFT pixels, the part a copy moved by up to MAX_SHIFT still shows)."""
    return _signature(_centre(_unit(thumbs), 0, 0))


def _centre(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """The (SIZE - 2 MAX_SHIFT)^2 window of ``x`` that lines up with an upstream picture's centre
    when ``x`` is that picture moved by (dy, dx). Cropping instead of shifting with replicated
    edges matters: replicated rows of a fine texture are streaks, and after the blur and the
    pooling those streaks outweigh the texture itself (a copy shifted by 3 pixels scored 0.3)."""
    m, n = MAX_SHIFT, SIZE - 2 * MAX_SHIFT
    return x[..., m + dy:m + dy + n, m + dx:m + dx + n]


def _signature(x: torch.Tensor) -> torch.Tensor:
    t = F.adaptive_avg_pool2d(gaussian_blur(x, SIGNATURE_BLUR), SIGNATURE)
    t = t - t.mean(dim=(2, 3), keepdim=True)
    t = t / (t.flatten(2).norm(dim=2)[..., None, None] + 1e-3)  # a flat channel stays ~0
    return F.normalize(t.flatten(1), dim=1)


#: The shifts test images are signed at: every shift of up to MAX_SHIFT. A coarser grid (every
#: shift within a pixel of one of 9) lost fine textures: a stripe pattern one pixel out of step
#: is another picture to an 8x8 signature, and the partner fell to rank 400 of 20,000.
SIGNATURE_SHIFTS = SHIFTS


def shifted_signatures(thumbs: torch.Tensor) -> torch.Tensor:
    """(B, len(SIGNATURE_SHIFTS), D): the signature of each image at each signature shift."""
    x = _unit(thumbs)
    return torch.stack([_signature(_centre(x, dy, dx)) for dy, dx in SIGNATURE_SHIFTS], dim=1)


@dataclass
class Prepared:
    """What verification reads of each image: band-passed luminance, blurred colours and the
    picture itself."""

    luma: torch.Tensor     # (B, 1, SIZE, SIZE)
    detail: torch.Tensor   # (B, 1, SIZE, SIZE): band-passed luma, for the alignment search
    colour: torch.Tensor   # (B, 3, SIZE, SIZE)
    picture: torch.Tensor  # (B, 3, SIZE, SIZE) in [0, 1]

    def __len__(self) -> int:
        return len(self.detail)

    def __getitem__(self, index) -> Prepared:
        return Prepared(self.luma[index], self.detail[index], self.colour[index],
                        self.picture[index])


def prepare(thumbs: torch.Tensor) -> Prepared:
    """Per-image features for :func:`verify`, computed once per image (not once per pair)."""
    thumbs = _unit(thumbs)
    luma = (thumbs * torch.tensor(LUMA, dtype=thumbs.dtype, device=thumbs.device)
            .view(1, 3, 1, 1)).sum(1, keepdim=True)
    return Prepared(luma, _band(luma), gaussian_blur(thumbs, COLOUR_BLUR), thumbs)


def _band(luma: torch.Tensor) -> torch.Tensor:
    lo, hi = DETAIL_BAND
    return gaussian_blur(luma, lo) - gaussian_blur(luma, hi)


@dataclass
class Verdict:
    """Per pair: the pixel score, its two parts, the shift that aligned the pair, and how far
    apart the aligned pictures are."""

    score: torch.Tensor         # min(detail, 1 - 2 * colour_error)
    detail: torch.Tensor        # worst local agreement of band-passed luminance, best shift
    colour_error: torch.Tensor  # RMS colour difference after per-channel gains (0..1 scale)
    shift: torch.Tensor         # (P, 2) (dy, dx): the test image is the upstream one moved by it
    pixel_error: torch.Tensor   # RMS difference of the aligned, gain-matched pictures (0..1)


def _centred(x: torch.Tensor) -> torch.Tensor:
    return x - x.mean(dim=(1, 2, 3), keepdim=True)


def _window(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Each pair's (SIZE - 2 MAX_SHIFT)^2 window of ``x`` (P, C, SIZE, SIZE) at its own shift."""
    m, n = MAX_SHIFT, SIZE - 2 * MAX_SHIFT
    ar = torch.arange(n, device=x.device)
    rows, cols = (m - dy)[:, None] + ar, (m - dx)[:, None] + ar
    return x[torch.arange(len(x), device=x.device)[:, None, None, None],
             torch.arange(x.shape[1], device=x.device)[None, :, None, None],
             rows[:, None, :, None], cols[:, None, None, :]]


def _gain_matched_rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """RMS of ``a - g * b`` with the least-squares per-channel gain ``g`` clipped to GAIN."""
    gain = ((a * b).sum((2, 3)) / (b * b).sum((2, 3)).clamp_min(1e-6)).clamp(*GAIN)
    return (a - gain[..., None, None] * b).pow(2).mean(dim=(1, 2, 3)).sqrt()


def _agreement(a: torch.Tensor, b: torch.Tensor, blur: float = 0.0) -> torch.Tensor:
    """SSIM's contrast-structure term ``(2ab + c) / (a^2 + b^2 + c)`` of zero-mean detail maps,
    over the whole window (``blur=0``: one number per pair) or in Gaussian windows of ``blur``
    pixels (a map). ``c = DETAIL_FLOOR^2`` per pixel: differences fainter than that (sensor
    noise, JPEG ringing on a flat picture) do not count, so two flat pictures agree."""
    if blur:
        g = lambda x: gaussian_blur(x, blur)  # noqa: E731
        return (2 * g(a * b) + DETAIL_FLOOR ** 2) / (g(a * a) + g(b * b) + DETAIL_FLOOR ** 2)
    c = DETAIL_FLOOR ** 2 * a[0].numel()
    return ((2 * (a * b).flatten(1).sum(1) + c)
            / (a.pow(2).flatten(1).sum(1) + b.pow(2).flatten(1).sum(1) + c))


def verify(a: Prepared, b: Prepared) -> Verdict:
    """Compare pairs ``(a[i], b[i])`` (test image, upstream candidate) in pixel space.

    1. Align: the shift of ``b`` (every shift of up to MAX_SHIFT) whose band-passed luminance
       agrees best with ``a`` over the whole picture. Both sides are cropped by MAX_SHIFT
       pixels, so the compared areas always overlap fully.
    2. Detail: the two aligned crops are band-passed alike, and the *worst* agreement in local
       windows (DETAIL_WINDOW) is the detail score, so a small object that is in one picture
       and not the other fails the pair even when the background is the same.
    3. Colour: the RMS difference of the blurred colours after the best per-channel gain.
    """
    if len(a) != len(b):
        raise ValueError(f"verify compares pairs: got {len(a)} and {len(b)} images")
    m, s = MAX_SHIFT, SIZE
    n = (s - 2 * m) ** 2
    ad = _centred(a.detail[..., m:s - m, m:s - m]).flatten(1, 3).view(len(a), s - 2 * m, -1)
    aa = ad.pow(2).sum((1, 2))
    c = DETAIL_FLOOR ** 2 * n
    # Window sums of b and b^2 at every shift from integral images; since ``ad`` has zero
    # mean, sum(ad * centred(b)) == sum(ad * b), so b need not be centred per shift.
    bd = b.detail[:, 0]
    pad = lambda x: F.pad(x, (1, 0, 1, 0)).cumsum(1).cumsum(2)  # noqa: E731
    i1, i2 = pad(bd), pad(bd * bd)
    best = torch.full((len(a),), -2.0, device=ad.device)
    arg = torch.zeros(len(a), dtype=torch.long, device=ad.device)
    for j, (dy, dx) in enumerate(SHIFTS):
        y0, x0 = m - dy, m - dx
        y1, x1 = y0 + s - 2 * m, x0 + s - 2 * m

        box1 = i1[:, y1, x1] - i1[:, y0, x1] - i1[:, y1, x0] + i1[:, y0, x0]
        box2 = i2[:, y1, x1] - i2[:, y0, x1] - i2[:, y1, x0] + i2[:, y0, x0]
        cross = (ad * bd[:, y0:y1, x0:x1]).sum((1, 2))
        bb = box2 - box1.pow(2) / n
        agree = (2 * cross + c) / (aa + bb + c)
        better = agree > best
        best = torch.where(better, agree, best)
        arg = torch.where(better, torch.full_like(arg, j), arg)
    shifts = torch.tensor(SHIFTS, device=best.device)[arg]
    dy, dx = shifts[:, 0], shifts[:, 1]
    # band-pass the two aligned crops alike, so a copy's replicated edge rows change nothing
    local_a = _centred(_band(a.luma[..., m:s - m, m:s - m]))
    local_b = _centred(_band(_window(b.luma, dy, dx)))
    detail = _agreement(local_a, local_b, DETAIL_WINDOW).flatten(1).amin(1)
    colour_error = _gain_matched_rms(a.colour[..., m:s - m, m:s - m], _window(b.colour, dy, dx))
    pixel_error = _gain_matched_rms(a.picture[..., m:s - m, m:s - m], _window(b.picture, dy, dx))
    score = torch.minimum(detail, 1.0 - COLOUR_WEIGHT * colour_error)
    return Verdict(score, detail, colour_error, shifts, pixel_error)


def pixel_score(test_images: torch.Tensor, upstream_images: torch.Tensor) -> Verdict:
    """Verify pairs of raw images (B, 3, H, W) directly: the one-call form of the above."""
    return verify(prepare(thumbnails(test_images)), prepare(thumbnails(upstream_images)))
