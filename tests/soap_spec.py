"""An independent, deliberately plain SOAP written from the specification (../shared/DESIGN.md section 4).

One parameter at a time, no batching, einsum contractions, torch.linalg.qr / eigh; the test oracle for
soap_kernels.SOAP. It shares no code with the library.
"""

from __future__ import annotations

import string

import torch


def spec_merge(shape, limit):
    """Merge consecutive dims while the product stays <= limit (a dim over the limit stays alone)."""
    out, run = [], 1
    for size in shape:
        if run * size > limit:
            if run > 1:
                out.append(run)
                run = size
            else:
                out.append(size)
                run = 1
        else:
            run *= size
    if run > 1 or not out:
        out.append(run)
    return out


def _rotate(x, bases, transpose):
    """x contracted on each dim i that has a basis Q_i: with Q_i (into the basis) or Q_i^T (back)."""
    letters = string.ascii_lowercase
    for i, q in enumerate(bases):
        if q is None:
            continue
        src = letters[: x.dim()]
        dst = src[:i] + "Z" + src[i + 1 :]
        matrix = f"{src[i]}Z" if not transpose else f"Z{src[i]}"
        x = torch.einsum(f"{src},{matrix}->{dst}", x, q)
    return x


class SpecSOAP:
    """SOAP per the spec for a list of tensors (updated in place); call step(grads)."""

    def __init__(self, params, lr=3e-3, betas=(0.95, 0.95), shampoo_beta=-1, eps=1e-8, weight_decay=0.01,
                 precondition_frequency=10, max_precond_dim=10000, merge_dims=False, precondition_1d=False,
                 normalize_grads=False, correct_bias=True):  # fmt: skip
        self.params = params
        self.lr, self.b1, self.b2 = lr, betas[0], betas[1]
        self.bs = shampoo_beta if shampoo_beta >= 0 else betas[1]
        self.eps, self.wd, self.freq = eps, weight_decay, precondition_frequency
        self.limit, self.merge, self.pre1d = max_precond_dim, merge_dims, precondition_1d
        self.normalize, self.correct_bias = normalize_grads, correct_bias
        self.state = [None] * len(params)

    def _shape(self, p):
        if p.dim() <= 1:
            return list(p.shape)
        return spec_merge(p.shape, self.limit) if self.merge else list(p.shape)

    def _has_factor(self, p, size):
        if p.dim() == 1:
            return self.pre1d and size <= self.limit
        return size <= self.limit

    def _outer(self, g, i):
        letters = string.ascii_lowercase[: g.dim()]
        other = letters[:i] + "Z" + letters[i + 1 :]
        return torch.einsum(f"{letters},{other}->{letters[i]}Z", g, g)

    def step(self, grads):
        for k, (p, g) in enumerate(zip(self.params, grads)):
            shape = self._shape(p)
            g = g.reshape(shape)
            st = self.state[k]
            if st is None:
                factors = [
                    (1 - self.bs) * self._outer(g, i) if self._has_factor(p, n) else None for i, n in enumerate(shape)
                ]
                bases = []
                for f in factors:
                    if f is None:
                        bases.append(None)
                        continue
                    _, vec = torch.linalg.eigh(f + 1e-30 * torch.eye(f.shape[0], dtype=f.dtype))
                    bases.append(torch.flip(vec, [1]))
                self.state[k] = dict(t=0, m=torch.zeros_like(g), v=torch.zeros_like(g), L=factors, Q=bases)
                continue
            gt = _rotate(g, st["Q"], transpose=False)
            st["t"] += 1
            t = st["t"]
            st["m"] = self.b1 * st["m"] + (1 - self.b1) * gt
            st["v"] = self.b2 * st["v"] + (1 - self.b2) * gt * gt
            size = self.lr
            if self.correct_bias:
                size = self.lr * (1 - self.b2**t) ** 0.5 / (1 - self.b1**t)
            u = _rotate(st["m"] / (st["v"].sqrt() + self.eps), st["Q"], transpose=True)
            if self.normalize:
                u = u / (1e-30 + u.pow(2).mean().sqrt())
            new = p.reshape(shape) - size * u
            new = new - self.lr * self.wd * new
            p.copy_(new.reshape(p.shape))
            for i, f in enumerate(st["L"]):
                if f is not None:
                    st["L"][i] = self.bs * f + (1 - self.bs) * self._outer(g, i)
            if t % self.freq == 0:
                m_plain = _rotate(st["m"], st["Q"], transpose=True)
                for i, (f, q) in enumerate(zip(st["L"], st["Q"])):
                    if f is None:
                        continue
                    rayleigh = torch.diagonal(q.T @ f @ q)
                    order = torch.argsort(rayleigh, descending=True)
                    st["v"] = st["v"].index_select(i, order)
                    st["Q"][i] = torch.linalg.qr(f @ q[:, order])[0]
                st["m"] = _rotate(m_plain, st["Q"], transpose=False)

    def plain_momentum(self, k):
        """m in parameter coordinates (independent of the basis)."""
        st = self.state[k]
        return _rotate(st["m"], st["Q"], transpose=True)
