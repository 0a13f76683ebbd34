"""The augmentation presets applied to whole batches on the training device (``train.augment_on``).

The loader's workers then only gather uint8 crops; the batch is augmented and resized to
``train.image_size`` where the model trains, in the presets' order and at the crops' size as on the loader
path, each operation a vectorised tensor operation over the batch, each image drawing its own parameters.
The presets are the ones of :mod:`maskclf.transforms` (the same operations, probabilities and ranges), so a
preset means the same on either path; plain torch, so it runs on a CPU as well (tests, CPU training).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from maskclf import transforms

_KERNEL = 5  # the largest blur kernel of the presets; smaller ones are zero-padded to it


class BatchAugment:
    """``preset``'s augmentation and the resize to ``size`` for uint8 (or float 0..255) NCHW batches on
    ``device``; returns float 0..255 batches of ``size`` x ``size``."""

    def __init__(self, preset: str, size: int, device: torch.device | str = "cpu", seed: int | None = None):
        self.ops = transforms.preset(preset)
        self.size, self.device = size, torch.device(device)
        self.gen = torch.Generator(device=self.device)
        if seed is None:
            self.gen.seed()
        else:
            self.gen.manual_seed(seed)

    # random draws, one per image
    def _rand(self, n: int) -> torch.Tensor:
        return torch.rand(n, generator=self.gen, device=self.device)

    def _uniform(self, n: int, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * self._rand(n)

    def _on(self, n: int, p: float) -> torch.Tensor:
        return self._rand(n) < p

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"BatchAugment takes NCHW batches of RGB images, got shape {tuple(x.shape)}")
        x = x.to(self.device, non_blocking=True).float()
        for op, kw in self.ops:
            if not hasattr(self, f"_{op}"):
                raise ValueError(f"BatchAugment has no operation '{op}'")
            x = getattr(self, f"_{op}")(x, **kw)
        if x.shape[-2:] != (self.size, self.size):  # cv2's INTER_LINEAR, as albumentations' Resize
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=False)
        return x.clamp_(0, 255)

    def _flip(self, x, p: float):
        return torch.where(self._on(x.shape[0], p).view(-1, 1, 1, 1), x.flip(-1), x)

    def _brightness_contrast(self, x, brightness: float, contrast: float, p: float):
        """x * (1 + c) + b * 255, c and b uniform in +-contrast and +-brightness (albumentations', by max)."""
        n = x.shape[0]
        on = self._on(n, p)
        alpha = torch.where(on, 1 + self._uniform(n, -contrast, contrast), torch.ones_like(on, dtype=x.dtype))
        beta = torch.where(on, 255 * self._uniform(n, -brightness, brightness), torch.zeros_like(alpha))
        return (x * alpha.view(-1, 1, 1, 1) + beta.view(-1, 1, 1, 1)).clamp_(0, 255)

    def _hsv(self, x, hue: float, sat: float, val: float, p: float):
        """Hue shifted by up to ``hue`` of OpenCV's 180 steps, saturation and value by up to ``sat`` / ``val`` of
        255, as albumentations' HueSaturationValue on uint8 images."""
        n = x.shape[0]
        on = self._on(n, p).view(-1, 1, 1)
        dh = self._uniform(n, -hue, hue).view(-1, 1, 1) / 180
        ds = self._uniform(n, -sat, sat).view(-1, 1, 1) / 255
        dv = self._uniform(n, -val, val).view(-1, 1, 1) / 255
        rgb = x / 255
        r, g, b = rgb.unbind(1)
        v, _ = rgb.max(1)
        c = v - rgb.min(1).values
        s = torch.where(v > 0, c / v.clamp_min(1e-8), torch.zeros_like(v))
        safe = c.clamp_min(1e-8)
        h = torch.where(v == r, ((g - b) / safe) % 6, torch.where(v == g, (b - r) / safe + 2, (r - g) / safe + 4))
        h = torch.where(c > 0, h / 6, torch.zeros_like(h))
        h = torch.where(on, (h + dh) % 1, h)
        s = torch.where(on, (s + ds).clamp(0, 1), s)
        v = torch.where(on, (v + dv).clamp(0, 1), v)
        # HSV -> RGB: each channel k is v - v s max(0, min(t, 4 - t, 1)), t = (k + 6 h) mod 6, k = 5, 3, 1
        out = [v - v * s * ((k + 6 * h) % 6).clamp(0, 4).sub(2).abs().neg().add(2).clamp(0, 1) for k in (5, 3, 1)]
        return torch.stack(out, 1) * 255

    def _affine(self, x, scale: tuple[float, float], translate: float, rotate: float, p: float):
        """Scale (each side its own), translation and rotation drawn per image, bilinear, zeros outside the photo
        (albumentations' Affine with its constant border)."""
        n = x.shape[0]
        on = self._on(n, p)
        sx, sy = self._uniform(n, *scale), self._uniform(n, *scale)
        tx, ty = self._uniform(n, -translate, translate), self._uniform(n, -translate, translate)
        a = torch.deg2rad(self._uniform(n, -rotate, rotate))
        cos, sin = torch.cos(a), torch.sin(a)
        # output -> input: p_in = S^-1 R^-1 (p_out - t), in [-1, 1] coordinates (a shift of tx widths is 2 tx)
        inv = torch.stack([torch.stack([cos / sx, sin / sx], -1), torch.stack([-sin / sy, cos / sy], -1)], 1)
        t = torch.stack([2 * tx, 2 * ty], -1).unsqueeze(-1)
        theta = torch.cat([inv, -inv @ t], -1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        return torch.where(on.view(-1, 1, 1, 1), warped, x)

    def _blur(self, x, kernel: tuple[int, int], p: float):
        """One of a Gaussian blur (odd size in ``kernel``, sigma 0.5..3) and a motion blur (a line of that length
        at a random angle), as albumentations' OneOf([GaussianBlur, MotionBlur])."""
        n = x.shape[0]
        on = self._on(n, p)
        motion = self._on(n, 0.5)
        sizes = torch.tensor(range(kernel[0], kernel[1] + 1, 2), device=self.device, dtype=x.dtype)
        radius = ((sizes[(self._rand(n) * len(sizes)).long().clamp_max(len(sizes) - 1)] - 1) / 2).view(-1, 1, 1)
        d = torch.arange(_KERNEL, device=self.device, dtype=x.dtype) - _KERNEL // 2
        dy, dx = d.view(1, -1, 1), d.view(1, 1, -1)
        inside = (dx.abs() <= radius) & (dy.abs() <= radius)
        sigma = self._uniform(n, 0.5, 3.0).view(-1, 1, 1)
        gauss = torch.exp(-(dx ** 2 + dy ** 2) / (2 * sigma ** 2)) * inside
        angle = (self._rand(n) * math.pi).view(-1, 1, 1)
        along, across = dx * torch.cos(angle) + dy * torch.sin(angle), -dx * torch.sin(angle) + dy * torch.cos(angle)
        line = (1 - across.abs()).clamp_min(0) * (along.abs() <= radius + 0.5) * inside
        k = torch.where(motion.view(-1, 1, 1), line, gauss)
        k = k / k.sum((1, 2), keepdim=True)
        identity = ((dx == 0) & (dy == 0)).to(x.dtype).expand(n, -1, -1)
        k = torch.where(on.view(-1, 1, 1), k, identity)
        h, w = x.shape[-2:]
        padded = F.pad(x.reshape(1, n * 3, h, w), [_KERNEL // 2] * 4, mode="reflect")
        weight = k.repeat_interleave(3, 0).unsqueeze(1)
        return F.conv2d(padded, weight, groups=n * 3).view(n, 3, h, w)

    def _noise(self, x, std: tuple[float, float], p: float):
        """Gaussian noise per pixel and channel, its std drawn per image in ``std`` (a share of 255)."""
        n = x.shape[0]
        scale = torch.where(self._on(n, p), 255 * self._uniform(n, *std), torch.zeros(n, device=self.device))
        noise = torch.randn(x.shape, generator=self.gen, device=self.device, dtype=x.dtype)
        return (x + noise * scale.view(-1, 1, 1, 1)).clamp_(0, 255)

    def _dropout(self, x, holes: tuple[int, int], size: tuple[float, float], p: float):
        """``holes`` rectangles of zeros, each side a share ``size`` of the image's, as albumentations'
        CoarseDropout."""
        n, _, h, w = x.shape
        on = self._on(n, p)
        count = holes[0] + (self._rand(n) * (holes[1] - holes[0] + 1)).long().clamp_max(holes[1] - holes[0])
        ys = torch.arange(h, device=self.device).view(1, -1, 1)
        xs = torch.arange(w, device=self.device).view(1, 1, -1)
        mask = torch.zeros(n, h, w, dtype=torch.bool, device=self.device)
        for j in range(holes[1]):
            hh = (self._uniform(n, *size) * h).long().clamp_min(1)
            ww = (self._uniform(n, *size) * w).long().clamp_min(1)
            y0 = (self._rand(n) * (h - hh + 1)).long()
            x0 = (self._rand(n) * (w - ww + 1)).long()
            box = ((ys >= y0.view(-1, 1, 1)) & (ys < (y0 + hh).view(-1, 1, 1))
                   & (xs >= x0.view(-1, 1, 1)) & (xs < (x0 + ww).view(-1, 1, 1)))
            mask |= box & (on & (j < count)).view(-1, 1, 1)
        return x.masked_fill(mask.unsqueeze(1), 0)
