"""Train the bundled default TensorNet on the GFN2-xTB data of generate_data.py.

The network is built by torchmd-net's own ``create_model`` (pure-PyTorch TensorNet path) and saved
in torchmd-net's checkpoint format (``hyper_parameters`` + ``state_dict`` with ``model.`` keys), so
``torchmdnet.models.model.load_model`` and ``tensornet_fast.load_model`` both read it.

Energy model: E = sum_i (std * eps_i + atomref[z_i]); atomref is a least-squares fit of the
training energies on composition (Atomref prior, frozen), std is the RMS training force component.
Loss: MSE of forces [eV/A] + W_E * MSE of energy per atom [eV]. AdamW, cosine learning-rate decay,
fixed number of epochs; the checkpoint with the best validation loss is kept.

Run (deterministic with one thread):
    python training/train.py [--data training/data/gfn2_organics.npz] \
        [--out training/runs/default.ckpt]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import load_split, use_pure_pytorch_tensornet  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
SEED = 7
MAX_Z = 18  # H..Cl

HPARAMS = dict(
    model="tensornet",
    embedding_dimension=48,
    num_layers=2,
    num_rbf=32,
    rbf_type="expnorm",
    trainable_rbf=False,
    activation="silu",
    cutoff_lower=0.0,
    cutoff_upper=5.0,
    max_z=MAX_Z,
    max_num_neighbors=64,
    equivariance_invariance_group="O(3)",
    precision=32,
    output_model="Scalar",
    reduce_op="add",
    derivative=True,
    atom_filter=-1,
    prior_model="Atomref",
    prior_args=[{"max_z": MAX_Z, "trainable": False, "enable": True}],
    charge=False,
    spin=False,
    remove_ref_energy=False,
    standardize=False,
    static_shapes=False,
    box_vecs=None,
    load_model=None,
    output_mlp_num_layers=0,
)


def fit_atomref(train) -> np.ndarray:
    """Per-element reference energies [eV]: least squares of E on element counts."""
    counts = np.zeros((len(train), MAX_Z))
    for k, z in enumerate(train.z):
        np.add.at(counts[k], z.astype(np.int64), 1.0)
    present = counts.sum(0) > 0
    coef, *_ = np.linalg.lstsq(counts[:, present], train.energy, rcond=None)
    ref = np.zeros(MAX_Z)
    ref[present] = coef
    return ref


def evaluate(model, data, batch_size=64):
    """MAE of energy per atom [eV], MAE of force components [eV/A], and the loss terms."""
    model.eval()
    e_abs = e_sq = f_abs = f_sq = 0.0
    n_f = 0
    for start in range(0, len(data), batch_size):
        idx = np.arange(start, min(start + batch_size, len(data)))
        z, pos, batch, e_ref, f_ref, n = data.batch(idx)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            e, f = model(z, pos, batch=batch)
        de = (e.detach().double() - e_ref)[:, 0] / n
        df = (f.detach() - f_ref).double()
        e_abs += float(de.abs().sum())
        e_sq += float((de**2).sum())
        f_abs += float(df.abs().sum())
        f_sq += float((df**2).sum())
        n_f += df.numel()
    return {
        "e_mae": e_abs / len(data),
        "f_mae": f_abs / n_f,
        "e_mse": e_sq / len(data),
        "f_mse": f_sq / n_f,
    }


def save_checkpoint(model, hparams, path, extra):
    state = {"model." + k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"hyper_parameters": copy.deepcopy(hparams), "state_dict": state, **extra}, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.path.join(HERE, "data", "gfn2_organics.npz"))
    ap.add_argument("--out", default=os.path.join(HERE, "runs", "default.ckpt"))
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="end after this many epochs of the --epochs schedule (0: run all)",
    )
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--energy-weight", type=float, default=100.0)
    ap.add_argument("--max-train", type=int, default=0, help="subsample the training set (0: all)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED)
    rng = np.random.default_rng(SEED)
    use_pure_pytorch_tensornet()
    from torchmdnet.models.model import create_model, create_prior_models

    train, val = load_split(args.data, "train"), load_split(args.data, "val")
    if args.max_train:
        keep = np.sort(rng.permutation(len(train))[: args.max_train])
        train = type(train)(
            [train.z[i] for i in keep],
            [train.pos[i] for i in keep],
            [train.forces[i] for i in keep],
            train.energy[keep],
            train.kind[keep],
            train.system[keep],
        )
    atomref = fit_atomref(train)
    f_rms = float(np.sqrt(np.mean(np.concatenate(train.forces).astype(np.float64) ** 2)))
    resid = np.array([e - atomref[z.astype(np.int64)].sum() for e, z in zip(train.energy, train.z)])
    print(
        f"train {len(train)} structures, val {len(val)}; force RMS {f_rms:.3f} eV/A; "
        f"residual energy after atomref: std {resid.std():.3f} eV",
        flush=True,
    )

    hparams = copy.deepcopy(HPARAMS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        priors = create_prior_models(hparams)
        model = create_model(
            hparams,
            prior_model=priors,
            mean=torch.tensor(0.0),
            std=torch.tensor(f_rms, dtype=torch.float32),
        )
    ref = torch.tensor(atomref, dtype=torch.float32)[:, None]
    model.prior_model[0].initial_atomref.copy_(ref)
    model.prior_model[0].atomref.weight.data.copy_(ref)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    print(f"model: {n_params} trainable parameters", flush=True)

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    steps_per_epoch = math.ceil(len(train) / args.batch_size)
    total = args.epochs * steps_per_epoch
    warm = min(200, total // 20)

    def lr_at(step):
        if step < warm:
            return args.lr * (step + 1) / warm
        return args.lr * (
            0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))
        )

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    log_path = os.path.splitext(args.out)[0] + "_log.jsonl"
    log = open(log_path, "w")
    best = math.inf
    step = 0
    t0 = time.time()
    for epoch in range(args.stop_after or args.epochs):
        model.train()
        order = rng.permutation(len(train))
        run_e = run_f = 0.0
        for b in range(steps_per_epoch):
            idx = order[b * args.batch_size : (b + 1) * args.batch_size]
            z, pos, batch, e_ref, f_ref, n = train.batch(idx)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                e, f = model(z, pos, batch=batch)
            loss_e = (((e.double() - e_ref)[:, 0] / n) ** 2).mean()
            loss_f = ((f - f_ref) ** 2).mean()
            loss = args.energy_weight * loss_e + loss_f
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 10.0)
            opt.step()
            run_e += float(loss_e.detach())
            run_f += float(loss_f.detach())
            step += 1
        m = evaluate(model, val)
        val_loss = args.energy_weight * m["e_mse"] + m["f_mse"]
        rec = {
            "epoch": epoch,
            "step": step,
            "lr": lr_at(step - 1),
            "time_s": round(time.time() - t0, 1),
            "train_e_rmse": math.sqrt(run_e / steps_per_epoch),
            "train_f_rmse": math.sqrt(run_f / steps_per_epoch),
            "val_e_mae": m["e_mae"],
            "val_f_mae": m["f_mae"],
            "val_loss": val_loss,
        }
        log.write(json.dumps(rec) + "\n")
        log.flush()
        print(
            " ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()
            ),
            flush=True,
        )
        if val_loss < best:
            best = val_loss
            save_checkpoint(
                model,
                hparams,
                args.out,
                {
                    "epoch": epoch,
                    "global_step": step,
                    "training": {"args": vars(args), "seed": SEED, "metrics": rec},
                },
            )
    print(
        f"done in {time.time() - t0:.0f} s; best val loss {best:.4g}; wrote {args.out}", flush=True
    )


if __name__ == "__main__":
    main()
