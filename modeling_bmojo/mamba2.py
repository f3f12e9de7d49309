"""The Mamba-2 mixer (Dao & Gu, "Transformers are SSMs", 2024): B'MOJO's fading memory.

x -> in_proj -> (z, xBC, dt); xBC -> causal depthwise conv -> SiLU -> (x, B, C);
y = SSD(x, softplus(dt + dt_bias), -exp(A_log), B, C) + D x;  out = out_proj(RMSNorm(y * SiLU(z))),
with the step size and the decay rate bounded (DT_LIMIT, A_LOG_MAX below) so that no parameter value
can make the scan produce inf or NaN.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..configuration.configuration_bmojo import SSM_A_INITS
from ..kernels.dispatch import causal_conv1d_silu, gated_rms_norm, ssd_scan, ssd_step
from .common import RMSNorm, gather_last, no_loss, real_tokens
from .state import Mamba2State, copy_rows

# Bounds of the discretisation, applied in both forms (parallel and one-token step) so they stay one function.
# Mamba-2 clamps dt after the softplus to `dt_limit` (mamba_ssm's Mamba2 and its Triton scan; HF's
# `time_step_limit`), by default (0, inf), and leaves A = -exp(A_log) unbounded. Then A_log > ~88.7 overflows
# A to -inf in float32 (NaN logits: -inf * 0 on padding, where dt = 0, and -inf - -inf in the chunked scan's
# decay differences), and a huge dt overflows dt * x and dt * A. Both bounds bind only far outside what
# initialisation (dt in [dt_min, dt_max] = [1e-3, 0.1], A in [1, 16]) and training produce, so they change
# no normal model's outputs:
#   - dt <= 100, i.e. a softplus input >= 100 (the init bias is at most ~-2.25); at dt = 100 every head with
#     A >= 0.5 already keeps less than exp(-50) of its state per step. dt >= 0 is the softplus's own range.
#   - A <= 1e4 (A_log <= log 1e4 ~ 9.2, 6.5 nats above its largest initial value log 16). At the bound a head
#     keeps exp(-1) of its state per step at the init floor dt = 1e-4 and nothing from dt = 0.01 (exp(-100)):
#     only steps with both A > 1e4 and dt < 0.01 see a difference. No lower bound: A_log -> -inf gives
#     A -> 0 (decay 1), which is finite.
# Hence |dt * A| <= 1e6 per step: the decay exp(dt * A) lies in [0, 1] (0 where it underflows, a full reset)
# and the cumulative log-decays stay finite for any chunk size. A value past a bound gets no gradient.
DT_LIMIT = (0.0, 100.0)
A_LOG_MAX = math.log(1e4)


def ssm_init_values(config, heads):
    """Mamba-2 initialisation: (dt_bias, A_log, D) with dt log-uniform in [dt_min, dt_max], D = 1, and A per
    `config.ssm_a_init`: "uniform" draws A from U(1, 16), "arange" sets A_h = h + 1 (HF Mamba2's init)."""
    log_lo, log_hi = math.log(config.dt_min), math.log(config.dt_max)
    dt = torch.exp(torch.rand(heads) * (log_hi - log_lo) + log_lo).clamp(min=config.dt_init_floor)
    dt_bias = dt + torch.log(-torch.expm1(-dt))  # inverse of softplus
    a_init = getattr(config, "ssm_a_init", "uniform")  # configs saved before the field existed: uniform
    if a_init == "arange":
        a = torch.arange(1, heads + 1, dtype=torch.float32)
    elif a_init == "uniform":
        a = torch.empty(heads).uniform_(1, 16)
    else:
        raise ValueError(f"BMojoConfig.ssm_a_init must be one of {SSM_A_INITS}, got {a_init!r}")
    return dt_bias, torch.log(a), torch.ones(heads)


class Mamba2Mixer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.hidden_size = config.hidden_size
        self.inner = config.ssm_inner_size
        self.heads = config.ssm_num_heads
        self.head_dim = config.ssm_head_dim
        self.groups = config.ssm_n_groups
        self.state_size = config.ssm_state_size
        self.kernel = config.conv_kernel
        self.chunk_size = config.ssm_chunk_size
        self.conv_dim = self.inner + 2 * self.groups * self.state_size
        self.in_proj = nn.Linear(self.hidden_size, self.inner + self.conv_dim + self.heads, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, self.kernel, groups=self.conv_dim,
                                padding=self.kernel - 1, bias=True)
        self.dt_bias = nn.Parameter(torch.zeros(self.heads))
        self.A_log = nn.Parameter(torch.zeros(self.heads))
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm = RMSNorm(self.inner, eps=config.rms_norm_eps)
        self.out_proj = nn.Linear(self.inner, self.hidden_size, bias=False)
        self.use_kernels = config.use_kernels

    def _in_proj(self, hidden):
        """in_proj(hidden) of the parallel form. Its width (2 inner + 2 G N + heads: 1,804 at the matched 130m
        preset) is rarely a multiple of 8, and cuBLAS then falls back to slow align-2 kernels (an H200 prefill
        of 32k tokens: 0.41 ms a layer). On CUDA, without autograd and outside torch.compile (which pads on
        its own), the weight is padded with zero rows to a multiple of 8 and the product's extra columns are
        dropped (a view): the same values, from aligned kernels, for one small copy of the weight. The
        one-token step keeps nn.Linear: there the copy would be per token, for a product of B rows."""
        weight = self.in_proj.weight
        pad = -weight.shape[0] % 8
        if not pad or not hidden.is_cuda or torch.is_grad_enabled() or torch.compiler.is_compiling():
            return self.in_proj(hidden)
        return F.linear(hidden, F.pad(weight, (0, 0, 0, pad)))[..., :weight.shape[0]]

    def _split(self, projected):
        z, xbc, dt = projected.split([self.inner, self.conv_dim, self.heads], dim=-1)
        return z, xbc, dt

    def _ssm_inputs(self, xbc):
        x, b, c = xbc.split([self.inner, self.groups * self.state_size, self.groups * self.state_size], dim=-1)
        shape = xbc.shape[:-1]
        return (x.reshape(*shape, self.heads, self.head_dim),
                b.reshape(*shape, self.groups, self.state_size),
                c.reshape(*shape, self.groups, self.state_size))

    def discretisation(self, dt):
        """Raw dt [..., H] -> (step size dt [..., H], decay rate A [H] < 0), float32, within the bounds."""
        dt = F.softplus(dt.float() + self.dt_bias.float()).clamp(*DT_LIMIT)
        return dt, -torch.exp(self.A_log.float().clamp(max=A_LOG_MAX))

    def _output(self, y, z):
        y = y.reshape(*z.shape)
        gated = gated_rms_norm(y, z, self.norm.weight, self.norm.eps, use_kernels=self.use_kernels)
        return self.out_proj(gated)

    def forward(self, hidden, lengths, state=None):
        """hidden [B, T, d]; rows hold lengths[b] real tokens first, padding after. Returns (out, aux = 0).
        Writes the recurrent state at each row's length into `state` (a Mamba2State) when given."""
        seqlen = hidden.shape[1]
        z, xbc, dt = self._split(self._in_proj(hidden))
        xbc_conv = causal_conv1d_silu(xbc, self.conv1d.weight[:, 0], self.conv1d.bias,
                                      use_kernels=self.use_kernels)  # (B, T, C)
        x, b, c = self._ssm_inputs(xbc_conv)
        real = real_tokens(lengths, seqlen)
        dt, A = self.discretisation(dt)
        dt = dt * real[..., None]  # dt = 0 on padding: the state is neither decayed nor fed there.
        y, final = ssd_scan(x, dt, A, b, c, self.chunk_size, D=self.D, output_final_state=state is not None,
                            use_kernels=self.use_kernels)
        if state is not None:
            conv, _ = gather_last(xbc, lengths, self.kernel - 1)  # (B, k-1, C)
            state.conv.copy_(conv.transpose(1, 2))
            state.ssm.copy_(final)
        return self._output(y, z), no_loss(hidden.device)

    def new_state(self, batch, device, dtype, max_length=None):
        return Mamba2State(batch, self.conv_dim, self.kernel, self.heads, self.head_dim, self.state_size,
                           device, dtype)

    def writes_state_through_custom_op(self, hidden):
        return False

    def step(self, hidden, pos, valid, state):
        """One token per row: hidden [B, d], valid [B] bool. Updates `state` in place for valid rows only
        (`pos` is unused: the SSM has no positions; the argument keeps one signature for every mixer)."""
        z, xbc, dt = self._split(self.in_proj(hidden))
        window = torch.cat([state.conv, xbc[:, :, None].to(state.conv.dtype)], dim=-1)  # (B, C, k)
        conv = (window * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias
        x, b, c = self._ssm_inputs(F.silu(conv).to(hidden.dtype))
        dt, A = self.discretisation(dt)
        y, ssm = ssd_step(x, dt, A, b, c, state.ssm, D=self.D, use_kernels=self.use_kernels)
        copy_rows(state.conv, window[..., 1:], valid)
        copy_rows(state.ssm, ssm, valid)
        return self._output(y, z)
