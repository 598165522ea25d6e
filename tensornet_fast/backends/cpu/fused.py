"""The cpu backend's compiled path: the whole network from edge_vec to epsilon_i as ONE autograd
node with a hand-written backward (csrc/: the edge passes, one op per interaction layer, the
embedding's combine step, the squared norms, and the per-atom LayerNorm + MLP stacks), plus the
per-model constants it needs (stacked and packed weights), rebuilt when the weights change."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from ..shared.cache import derived
from .ops import ACTIVATION_IDS, stage


def _pack_weights(ops, w: Tensor, transpose: bool) -> Tensor:
    """Linear weights [..., out, in] packed for the compiled float32 GEMM (csrc: cpu_gemm_pack;
    B = W^T for ``x W^T``, else B = W), or an empty tensor where it does not apply (float64,
    widths not a multiple of 16, no AVX2/FMA, no extension): the kernels then call BLAS."""
    return ops.cpu_gemm_pack(w, transpose) if ops is not None else w.new_empty(0)


class _RowStack:
    """LayerNorm, then linear layers (each optionally followed by the activation) on rows
    [N, C], with detached weights and a hand-written input backward: the fused path's per-atom
    MLPs in one compiled op per direction (csrc: cpu_rows_fwd / cpu_rows_bwd; aten's kernels
    on each thread's rows in one parallel region)."""

    def __init__(self, ops, norm: nn.LayerNorm, layers: list, activation: str):
        self.ops = ops
        self.ln_w, self.ln_b, self.eps = norm.weight.detach(), norm.bias.detach(), norm.eps
        self.ws = [lin.weight.detach() for lin, _ in layers]
        self.bs = [
            lin.bias.detach() if lin.bias is not None else lin.weight.new_zeros(lin.out_features)
            for lin, _ in layers
        ]
        act = ACTIVATION_IDS[activation]
        self.acts = [act if activate else -1 for _, activate in layers]
        # packed for the compiled GEMM (csrc: cpu_gemm_pack): forward h W^T, backward g W
        self.packed_fwd = [_pack_weights(ops, w, True) for w in self.ws]
        self.packed_bwd = [_pack_weights(ops, w, False) for w in self.ws]

    def forward(self, x: Tensor) -> tuple[Tensor, tuple]:
        mean, rstd, *pre_post = self.ops.cpu_rows_fwd(
            x, self.ln_w, self.ln_b, self.eps, self.ws, self.bs, self.acts, self.packed_fwd
        )
        out = pre_post[-1] if self.acts[-1] >= 0 else pre_post[-2]  # [N, C_L]
        # Only activated layers' (pre, out) are needed. A plain last linear's output is the
        # autograd Function's output: kept in its ctx it would make a reference cycle through
        # its grad_fn, and every call's tapes would wait for the cyclic garbage collector.
        empty = x.new_empty(0)
        pre_post = [t if self.acts[k // 2] >= 0 else empty for k, t in enumerate(pre_post)]
        return out, (x, mean, rstd, pre_post)

    def backward(self, g: Tensor, tape: tuple) -> Tensor:
        x, mean, rstd, pre_post = tape
        args = (self.ln_w, self.ln_b, self.ws, self.acts, mean, rstd, pre_post, self.packed_bwd)
        return self.ops.cpu_rows_bwd(g.contiguous(), x, *args)


class Prepared:
    """Per-model constants of the compiled path: the stacked, detached [k, F, F] tensor-channel
    weights, the same packed for the compiled GEMM, and the per-atom MLP stacks. Built once per
    state of the weights (``prepared``); building them per call cost ~1 ms of the 64-g2
    benchmark."""

    def __init__(self, model, ops):
        self.ops = ops
        rep = model.representation_model
        emb = rep.tensor_embedding
        self.w_emb = torch.stack([lin.weight.detach() for lin in emb.linears_tensor])
        self.w_layers = [
            torch.stack([lin.weight.detach() for lin in layer.linears_tensor])
            for layer in rep.layers
        ]
        # the same weights packed for the compiled GEMM: (forward x W^T, backward g W)
        self.w_emb_packed = tuple(_pack_weights(ops, self.w_emb, t) for t in (True, False))
        self.w_layers_packed = [
            tuple(_pack_weights(ops, w, t) for t in (True, False)) for w in self.w_layers
        ]
        config = model.config
        act = config.activation
        self.embedding_mlp = _RowStack(
            ops, emb.init_norm, [(lin, True) for lin in emb.linears_scalar], act
        )
        # The Scalar head is a chain and joins the row stack. matgl's gated readout is two
        # branches (and SiLU whatever the activation): the stack ends at ``linear`` and the
        # gated head runs in autograd after the fused node (backend.py); F=128, 1000 atoms:
        # ~8 GEMMs of [N, 128] x [128, 128] each way.
        stack = [(rep.linear, config.linear_activation)]
        self.gated = config.readout == "gated"
        if not self.gated:
            head = [m for m in model.output_model.output_network.layers if isinstance(m, nn.Linear)]
            stack += [(lin, True) for lin in head[:-1]] + [(head[-1], False)]
        self.head = _RowStack(ops, rep.out_norm, stack, act)
        self.o3 = model.config.equivariance_invariance_group == "O(3)"


def prepared(model, ops, key: tuple) -> Prepared:
    """The model's ``Prepared``, rebuilt when its weights change (``key``: their
    ``shared.cache.weights_key``)."""
    return derived(model, "cpu_prepared", lambda: Prepared(model, ops), key)


def fused_forward(prep: Prepared, g, filters, ztab, pair, q) -> tuple[Tensor, tuple]:
    """edge passes, layers and head forward: (epsilon_i [N, 1] (gated readouts: the features
    after ``linear`` [N, F]), the tape ``fused_backward`` reads). Plain function: the autograd
    node (``_FusedModel``) and the direct energy + forces path (``backend.atomic_energies_vjp``)
    run the same code, so their numbers agree bitwise."""
    ops = prep.ops
    with stage("embedding_fwd"):
        tab, _, idx, s, inv_h = filters[0].kernel_args(False)
        raw = ops.cpu_embed_fwd(g.row_ptr, g.rhat, ztab, pair, tab, idx, s, inv_h)
    with stage("embed_combine_fwd"):
        norm, mlp_tape = prep.embedding_mlp.forward(ops.cpu_sq_norms(raw, False))
        x, p = ops.cpu_embed_combine_fwd(raw, norm, prep.w_emb, prep.w_emb_packed[0])
    layers = []
    for w, (wp, _), filt in zip(prep.w_layers, prep.w_layers_packed, filters[1:]):
        with stage("layer_fwd"):  # w [6, F, F]
            tab, _, idx, s, inv_h = filt.kernel_args(False)
            out, y, m, dx = ops.cpu_layer_fwd(
                x, w, wp, q, prep.o3, g.row_ptr, g.j, tab, idx, s, inv_h
            )
        layers.append((x, y, m, dx))
        x = out
    with stage("head_fwd"):
        feats = ops.cpu_sq_norms(x, True)  # [N, 3F]: 3 I^2 | ||A||^2 | ||S||^2
        eps, head_tape = prep.head.forward(feats)
    return eps, (raw, mlp_tape, norm, p, layers, x, head_tape)


def fused_backward(prep: Prepared, g, filters, ztab, pair, q, tapes, g_eps: Tensor) -> Tensor:
    """dE/d(edge_vec) [E, 3] given g_eps = dE/d(epsilon_i) and ``fused_forward``'s tape."""
    ops = prep.ops
    raw, mlp_tape, norm, p, layers, x, head_tape = tapes
    with stage("head_bwd"):
        gx = ops.cpu_sq_norms_bwd(x, prep.head.backward(g_eps, head_tape))
    gd = None  # dE/dd [E] summed over the layers
    per_layer = zip(prep.w_layers, prep.w_layers_packed, filters[1:], layers)
    for w, (_, wp), filt, saved in reversed(list(per_layer)):
        with stage("layer_bwd"):
            tab, dtab, idx, s, inv_h = filt.kernel_args(True)
            gx, gd_layer = ops.cpu_layer_bwd(
                gx, *saved, w, wp, q, prep.o3, g.row_ptr, g.j, tab, dtab, idx, s, inv_h
            )
        gd = gd_layer if gd is None else gd.add_(gd_layer)
    with stage("embed_combine_bwd"):
        graw, gnorm = ops.cpu_embed_combine_bwd(gx, p, norm, prep.w_emb, prep.w_emb_packed[1])
        gsq = prep.embedding_mlp.backward(gnorm, mlp_tape)
    with stage("embedding_bwd"):
        # the chain rule through rhat and d to edge_vec is in the kernel, and so is the
        # squared norm's 2 raw gsq (added to graw per row)
        tab, dtab, idx, s, inv_h = filters[0].kernel_args(True)
        edges = (g.row_ptr, g.rhat, g.d, ztab, pair)
        filt = (tab, dtab, idx, s, inv_h)
        gv = ops.cpu_embed_bwd(*edges, graw, *filt, raw, gsq.contiguous())
        if gd is not None:
            gv.add_(g.edge_vec_grad(gd, None))
    return gv


class _FusedModel(torch.autograd.Function):
    """edge_vec [E, 3] -> epsilon_i [N, 1] (gated readouts: the features after ``linear``
    [N, F]) with the compiled kernels (csrc/cpu/):
    embedding pass, combine, every interaction layer (normalisation, channel-linear GEMMs,
    message pass, 3x3 products, residual), squared norms and the output head, with ONE
    hand-written backward to dE/d(edge_vec). One autograd node instead of ~40 (measured on 64
    g2 molecules, 453 atoms: ~0.7 ms of a ~28 ms call, with the fused squared-norm backward; the
    time is in the kernels and GEMMs, not the autograd engine). Weights enter detached
    (inference: positions get gradients, parameters do not; training mode runs the reference
    backend)."""

    @staticmethod
    def forward(ctx, edge_vec, prep, g, filters, ztab, pair, q):
        eps, tapes = fused_forward(prep, g, filters, ztab, pair, q)
        ctx.prep, ctx.g, ctx.filters, ctx.ztab, ctx.pair, ctx.q = prep, g, filters, ztab, pair, q
        ctx.tapes = tapes
        return eps

    @staticmethod
    @once_differentiable
    def backward(ctx, g_eps):
        args = (ctx.prep, ctx.g, ctx.filters, ctx.ztab, ctx.pair, ctx.q, ctx.tapes)
        return fused_backward(*args, g_eps), None, None, None, None, None, None
