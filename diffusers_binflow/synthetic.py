"""Small binary distributions with exact probabilities and exact posterior means.

They serve as ground truth: a sampler fed the exact posterior mean ``E[x | x_sigma]`` as its "model" must
reproduce the distribution, so any error left is the sampler's own. For d <= ``MAX_ENUMERABLE_DIM`` bits each also
gives its exact probabilities over all ``2**d`` states, the reference for the exact metrics of
`diffusers_binflow.metrics`.

Every distribution exposes ``dim``, ``sample(num_samples, generator)`` (float 0/1 of shape (num_samples, dim)) and
``probabilities()`` (float64, shape (2**dim,)). State order, used throughout: the state index of a row of bits is
that row read as a binary number with bit 0 (the first column) the most significant,
``index = sum_i b_i 2**(d - 1 - i)``; `all_states` and `state_index` convert.
"""

import torch

from .bits import check_binary


MAX_ENUMERABLE_DIM = 20  # 2**20 states: about 8 MB of float64 probabilities


def check_enumerable(dim: int) -> None:
    """Raise a `ValueError` unless ``2**dim`` states can be enumerated (1 <= dim <= ``MAX_ENUMERABLE_DIM``)."""
    if not 1 <= dim <= MAX_ENUMERABLE_DIM:
        raise ValueError(f"Exact probabilities need 1 <= d <= {MAX_ENUMERABLE_DIM} bits to enumerate, got d = {dim}.")


def all_states(dim: int) -> torch.Tensor:
    """All ``2**dim`` bit vectors in state order, float 0/1 of shape (2**dim, dim); row j has state index j."""
    check_enumerable(dim)
    shifts = torch.arange(dim - 1, -1, -1)
    return ((torch.arange(2**dim)[:, None] >> shifts) & 1).float()


def state_index(bits: torch.Tensor) -> torch.Tensor:
    """State index of each row of `bits` (N, d): the row read as a binary number, first bit most significant."""
    check_binary(bits)
    if bits.ndim != 2:
        raise ValueError(f"`bits` must have shape (N, d), got {tuple(bits.shape)}.")
    check_enumerable(bits.shape[1])
    weights = 2 ** torch.arange(bits.shape[1] - 1, -1, -1)
    return (bits.long() * weights).sum(1)


def sample_states(probabilities: torch.Tensor, dim: int, num_samples: int,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact draws from a probability vector over the ``2**dim`` states: indices by `torch.multinomial`, as bits."""
    indices = torch.multinomial(probabilities, num_samples, replacement=True, generator=generator)
    return all_states(dim)[indices]


def exact_posterior_mean(probabilities: torch.Tensor, sample: torch.Tensor, sigma, bit_scale: float = 1.0,
                         chunk_size: int = 32) -> torch.Tensor:
    """``E[x | x_sigma]`` under any pmf over the ``2**d`` states (state order), with ``x = bit_scale (2b - 1)``
    and ``x_sigma = (1 - sigma) x + sigma eps``: the states weighted by ``p(b) N(x_sigma; (1 - sigma) x, sigma^2)``.
    Every state has the same ``||x||^2``, so a state's log weight is ``log p(b) + (1 - sigma) <x_sigma, x> /
    sigma^2`` up to a constant. `sample` (B, d), `sigma` a positive float or (B,); returns (B, d) in signal space.
    Costs O(B 2**d d) (only the states of positive probability count); `chunk_size` rows at a time keep the
    (chunk, states) weights small enough to stay in cache."""
    dim = sample.shape[-1]
    if probabilities.shape != (2**dim,):
        raise ValueError(f"Expected probabilities over the 2**{dim} states of (B, {dim}) samples, got "
                         f"{tuple(probabilities.shape)}.")
    if (torch.as_tensor(sigma) <= 0).any():
        raise ValueError("`sigma` must be positive: at sigma = 0 the state is the data and carries no noise to average "
                         "over.")
    support = probabilities > 0
    states = bit_scale * (2 * all_states(dim)[support] - 1)
    log_prior = probabilities[support].float().log()
    coefficient = torch.as_tensor((1 - sigma) / sigma**2, dtype=torch.float32).expand(sample.shape[0])
    means = []
    for rows, scale in zip(sample.float().split(chunk_size), coefficient.split(chunk_size)):
        weights = (log_prior + scale[:, None] * (rows @ states.T)).softmax(-1)  # (chunk, 2**d)
        means.append(weights @ states)
    return torch.cat(means).to(sample.dtype)


class ProductBernoulliMixture:
    """A mixture of product Bernoullis: pick component k with probability ``weights[k]``, then bit i is 1 with
    probability ``probs[k, i]``. One component is a product Bernoulli; probabilities in {0, 1} make prototypes.

    With ``x = bit_scale * (2b - 1)``, ``x_sigma = (1 - sigma) x + sigma eps`` and
    ``a = bit_scale (1 - sigma) x_sigma / sigma**2``, each component's likelihood factorises into
    ``p e^a + (1 - p) e^-a`` per bit, which gives the exact posterior mean in closed form.
    """

    def __init__(self, weights, probs):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.probs = torch.as_tensor(probs, dtype=torch.float64)
        if self.probs.ndim != 2 or self.weights.shape != self.probs.shape[:1]:
            raise ValueError("`probs` must be (K, d) with one weight per component in `weights` (K,).")
        if (self.probs < 0).any() or (self.probs > 1).any() or (self.weights < 0).any():
            raise ValueError("`probs` must lie in [0, 1] and `weights` must be non-negative.")
        self.weights = self.weights / self.weights.sum()

    @property
    def dim(self) -> int:
        return self.probs.shape[1]

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Bits, shape (num_samples, d), float 0/1."""
        components = torch.multinomial(self.weights, num_samples, replacement=True, generator=generator)
        return (torch.rand(num_samples, self.dim, generator=generator, dtype=torch.float64)
                < self.probs[components]).float()

    def log_prob(self, bits: torch.Tensor) -> torch.Tensor:
        """``log p(b) = log sum_k w_k prod_i probs[k, i]**b_i (1 - probs[k, i])**(1 - b_i)`` per row of `bits`
        (N, d); float64 (N,), ``-inf`` for rows of probability 0."""
        check_binary(bits)
        if bits.ndim != 2 or bits.shape[1] != self.dim:
            raise ValueError(f"`bits` must have shape (N, {self.dim}), got {tuple(bits.shape)}.")
        on = bits.bool()[:, None, :]  # (N, 1, d)
        log_bit = torch.where(on, self.probs.log()[None], torch.log1p(-self.probs)[None])  # (N, K, d)
        return torch.logsumexp(self.weights.log()[None] + log_bit.sum(-1), dim=1)

    def probabilities(self) -> torch.Tensor:
        """Exact ``p(state)`` for all ``2**d`` states in state order (d <= ``MAX_ENUMERABLE_DIM``), float64."""
        return self.log_prob(all_states(self.dim)).exp()

    def posterior_mean(self, sample: torch.Tensor, sigma: float, bit_scale: float = 1.0) -> torch.Tensor:
        """``E[x | x_sigma]`` for `sample` of shape (B, d) at a positive `sigma`; returns (B, d) in signal space."""
        a = (bit_scale * (1 - sigma) * sample.double() / sigma**2)[:, None, :]  # (B, 1, d)
        log_on, log_off = self.probs.log()[None] + a, (1 - self.probs).log()[None] - a  # (B, K, d)
        log_norm = torch.logaddexp(log_on, log_off)
        component_mean = (log_on - log_norm).exp() - (log_off - log_norm).exp()
        log_posterior = self.weights.log()[None] + log_norm.sum(-1)  # (B, K)
        mean = (log_posterior.softmax(-1)[..., None] * component_mean).sum(1)
        return (bit_scale * mean).to(sample.dtype)



class IsingModel:
    """A ``side x side`` Ising model with periodic boundaries (a torus: every site has 4 neighbours), enumerated
    exactly. Bit ``b`` of site ``(r, c)`` is column ``r * side + c`` (row-major) and its spin is ``s = 2b - 1``;

        E(s) = -coupling * sum_<ij> s_i s_j - field * sum_i s_i,     p(s) = exp(-E(s) / temperature) / Z,

    with the sum over the ``2 * side**2`` nearest-neighbour bonds (right and down neighbours, wrapping around) and
    Z by enumerating all ``2**(side**2)`` states (side 4: 65,536). ``side >= 3`` so that no bond is counted twice;
    ``side**2 <= MAX_ENUMERABLE_DIM``. For reference, the infinite lattice's critical temperature is
    ``2 / ln(1 + sqrt(2)) = 2.269`` (coupling 1, beta = 0.4407). At zero field p is symmetric under flipping every
    spin; as the temperature falls it concentrates on the two ground states (all 0, all 1).
    """

    def __init__(self, side: int = 4, temperature: float = 2.269, coupling: float = 1.0, field: float = 0.0):
        if side < 3:
            raise ValueError(f"A periodic Ising grid needs side >= 3 (no doubled bonds), got {side}.")
        check_enumerable(side * side)
        if not temperature > 0:
            raise ValueError(f"`temperature` must be positive, got {temperature}.")
        self.side, self.temperature, self.coupling, self.field = side, float(temperature), float(coupling), float(field)
        self._probabilities = (-self.energy(all_states(self.dim)) / self.temperature).softmax(0)

    @property
    def dim(self) -> int:
        return self.side * self.side

    def energy(self, bits: torch.Tensor) -> torch.Tensor:
        """``E(s)`` of each row of `bits` (N, side**2), float64 (N,)."""
        check_binary(bits)
        spins = (2 * bits.double() - 1).reshape(-1, self.side, self.side)
        bonds = (spins * spins.roll(1, dims=1)).sum((1, 2)) + (spins * spins.roll(1, dims=2)).sum((1, 2))
        return -self.coupling * bonds - self.field * spins.sum((1, 2))

    def probabilities(self) -> torch.Tensor:
        """Exact ``p(state)`` for all ``2**(side**2)`` states in state order, float64."""
        return self._probabilities.clone()

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Exact samples, shape (num_samples, side**2), float 0/1: state indices drawn from the exact pmf."""
        return sample_states(self._probabilities, self.dim, num_samples, generator)


def gf2_rank(matrix: torch.Tensor) -> int:
    """Rank over GF(2) of a 0/1 matrix, by Gaussian elimination."""
    rows = matrix.to(torch.uint8).clone()
    rank = 0
    for column in range(rows.shape[1]):
        pivots = torch.nonzero(rows[rank:, column]).flatten()
        if len(pivots) == 0:
            continue
        pivot = rank + pivots[0].item()
        rows[[rank, pivot]] = rows[[pivot, rank]]
        others = rows[:, column].bool()
        others[rank] = False
        rows[others] ^= rows[rank]
        rank += 1
        if rank == rows.shape[0]:
            break
    return rank


class LinearCode:
    """Uniform distribution over the codewords of a binary linear code ``{b : H b = 0 (mod 2)}``, with `H` the
    (m, n) parity-check matrix of 0/1. There are ``2**k`` codewords, ``k = n - rank_GF2(H)``; each has probability
    ``2**-k`` and every other state 0. A uniformly random bit vector is valid with probability ``2**-(n - k)``. All
    of a code's first- and second-order statistics can be those of fair coins, so only exact metrics
    (validity, coverage, TV) see a sampler's failures. n <= ``MAX_ENUMERABLE_DIM``; codewords are enumerated.
    """

    def __init__(self, parity_check_matrix):
        matrix = torch.as_tensor(parity_check_matrix)
        if matrix.ndim != 2:
            raise ValueError(f"`parity_check_matrix` must be (m, n), got shape {tuple(matrix.shape)}.")
        check_binary(matrix, "parity_check_matrix")
        check_enumerable(matrix.shape[1])
        self.parity_check_matrix = matrix.long()
        self.rank = gf2_rank(self.parity_check_matrix)
        states = all_states(self.dim)
        self._codewords = states[self.is_valid(states)]

    @classmethod
    def hamming(cls, r: int = 4) -> "LinearCode":
        """The ``[2**r - 1, 2**r - 1 - r]`` Hamming code: H's columns: all non-zero r-bit vectors (r = 4: [15, 11])."""
        columns = all_states(r)[1:]  # (2**r - 1, r)
        return cls(columns.T)

    @classmethod
    def random(cls, n: int = 16, k: int = 8, seed: int = 0) -> "LinearCode":
        """A fixed random ``[n, k]`` code: ``H = [A | I_(n-k)]`` with A uniform 0/1 from `seed` (always full rank)."""
        if not 0 < k < n:
            raise ValueError(f"A random [n, k] code needs 0 < k < n, got n = {n}, k = {k}.")
        a = torch.randint(0, 2, (n - k, k), generator=torch.Generator().manual_seed(seed))
        return cls(torch.cat([a, torch.eye(n - k, dtype=a.dtype)], dim=1))

    @property
    def dim(self) -> int:
        return self.parity_check_matrix.shape[1]

    @property
    def num_info_bits(self) -> int:
        """k: log2 of the number of codewords."""
        return self.dim - self.rank

    def is_valid(self, bits: torch.Tensor) -> torch.Tensor:
        """Bool (N,): whether each row of `bits` (N, n) satisfies every parity check, ``H b = 0 (mod 2)``."""
        check_binary(bits)
        if bits.ndim != 2 or bits.shape[1] != self.dim:
            raise ValueError(f"`bits` must have shape (N, {self.dim}), got {tuple(bits.shape)}.")
        return ((bits.long() @ self.parity_check_matrix.T) % 2 == 0).all(1)

    def codewords(self) -> torch.Tensor:
        """All ``2**k`` codewords in state order, float 0/1 of shape (2**k, n)."""
        return self._codewords.clone()

    def probabilities(self) -> torch.Tensor:
        """``2**-k`` on each codeword, 0 elsewhere, over all ``2**n`` states in state order; float64."""
        probabilities = torch.zeros(2**self.dim, dtype=torch.float64)
        probabilities[state_index(self._codewords)] = 2.0**-self.num_info_bits
        return probabilities

    def sample(self, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """Uniform codewords, shape (num_samples, n), float 0/1."""
        rows = torch.randint(len(self._codewords), (num_samples,), generator=generator)
        return self._codewords[rows]
