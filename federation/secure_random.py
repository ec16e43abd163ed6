"""Cryptographically secure randomness for DP-SGD (``privacy.secure_mode``).

Opacus' own secure mode needs torchcsprng, which has no build for Python 3.11 or torch
2.13. This module gives the same two guarantees with `cryptography` instead:

- every random bit of the Gaussian noise and of the Poisson sampling comes from a ChaCha20
  keystream keyed with 256 bits from the operating system, so no seed or generator state
  an attacker could learn or guess reproduces the noise;
- each noise value is the sum of four Gaussian draws divided by two, as Opacus' secure mode
  does against floating-point attacks on the Gaussian mechanism (Holohan et al. 2021,
  arXiv 2107.10138, section 5.1).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from opacus.optimizers.optimizer import (
    DPOptimizer,
    _check_processed_flag,
    _mark_as_processed,
)
from opacus.utils.uniform_sampler import UniformWithReplacementSampler


class ChaChaRandom:
    """Uniform and Gaussian samples from a ChaCha20 keystream (fresh OS key per instance)."""

    def __init__(self) -> None:
        cipher = Cipher(algorithms.ChaCha20(os.urandom(32), os.urandom(16)), mode=None)
        self._stream = cipher.encryptor()

    def uniform(self, n: int) -> np.ndarray:
        """``n`` doubles, uniform on the open interval (0, 1), 53 random bits each."""
        raw = self._stream.update(bytes(8 * n))
        words = np.frombuffer(raw, dtype=np.uint64) >> np.uint64(11)
        return (words.astype(np.float64) + 0.5) / float(1 << 53)

    def normal(self, n: int) -> np.ndarray:
        """``n`` standard normal doubles (Box-Muller)."""
        m = (n + 1) // 2
        u1, u2 = self.uniform(m), self.uniform(m)
        r = np.sqrt(-2.0 * np.log(u1))
        z = np.concatenate((r * np.cos(2 * math.pi * u2), r * np.sin(2 * math.pi * u2)))
        return z[:n]

    def gaussian_like(self, reference: torch.Tensor, std: float) -> torch.Tensor:
        """Noise of ``reference``'s shape: sum of four N(0, std^2) draws, halved."""
        n = reference.numel()
        total = self.normal(n) + self.normal(n) + self.normal(n) + self.normal(n)
        noise = torch.from_numpy(total * (std / 2.0)).to(reference.dtype)
        return noise.view(reference.shape)


class SecurePoissonSampler(UniformWithReplacementSampler):  # type: ignore[misc]  # untyped base
    """Opacus' Poisson sampler with its coin flips drawn from ChaCha20."""

    def __init__(self, *, num_samples: int, sample_rate: float, steps: int) -> None:
        super().__init__(num_samples=num_samples, sample_rate=sample_rate, steps=steps)
        self._random = ChaChaRandom()

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.steps):
            mask = self._random.uniform(self.num_samples) < self.sample_rate
            yield np.flatnonzero(mask).tolist()


def use_secure_noise(optimizer: DPOptimizer) -> None:
    """Make ``optimizer`` draw its DP noise from ChaCha20 (same std as Opacus)."""
    random = ChaChaRandom()

    def add_noise(self: Any = optimizer) -> None:
        # Mirrors DPOptimizer.add_noise in Opacus 1.6, with the noise source replaced.
        for p in optimizer.params:
            _check_processed_flag(p.summed_grad)
            std = optimizer.noise_multiplier * optimizer.max_grad_norm
            noise = random.gaussian_like(p.summed_grad, std) if std > 0 else 0.0
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)

    optimizer.add_noise = add_noise
