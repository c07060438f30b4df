"""The global-batch loss (gather=True) on 2 ranks with gloo: loss and gradients equal those of one
process on the concatenated batch, with DDP's gradient averaging, for equal and unequal batches."""

import copy
import faulthandler
import importlib.util
import os
import sys
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from convirt_fast import ConVIRTLoss
from convirt_fast.kernels.distributed import convirt_loss_gathered
from convirt_fast.kernels.reference import convirt_loss_reference

WORLD = 2
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1" and importlib.util.find_spec("triton") is not None


def rel_err(x, ref):
    return ((x.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def global_batch(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    img = torch.randn(n, d, generator=g) * 2
    return img, 0.2 * img + torch.randn(n, d, generator=g)


def check_functional(rank, sizes, backend, lam=0.75, d=24):
    """Each rank feeds its slice; compare with the fp64 reference on the whole batch."""
    img_all, txt_all = global_batch(sum(sizes), d, seed=sum(sizes))
    off, m = sum(sizes[:rank]), sizes[rank]
    img = img_all[off:off + m].clone().requires_grad_()
    txt = txt_all[off:off + m].clone().requires_grad_()
    tau = torch.tensor(0.07, requires_grad=True)
    loss = convirt_loss_gathered(img, txt, tau, lam, backend=backend)
    (loss * 1.3).backward()

    ref_img, ref_txt = img_all.double().requires_grad_(), txt_all.double().requires_grad_()
    ref_tau = torch.tensor(0.07, dtype=torch.float64, requires_grad=True)
    ref = convirt_loss_reference(ref_img, ref_txt, ref_tau, lam)
    (ref * 1.3).backward()

    assert abs(loss.item() - ref.item()) < 1e-5, (rank, sizes, loss.item(), ref.item())  # the global loss
    # gradients are WORLD x dL/d(local inputs), so that DDP's mean over ranks is the global gradient
    assert rel_err(img.grad / WORLD, ref_img.grad[off:off + m]) < 2e-5
    assert rel_err(txt.grad / WORLD, ref_txt.grad[off:off + m]) < 2e-5
    tau_grad = tau.grad.clone()
    dist.all_reduce(tau_grad)
    assert abs(tau_grad.item() / WORLD - ref_tau.grad.item()) < 1e-5 * abs(ref_tau.grad.item())


def check_functional_triton_tiles(rank):
    """Triton on ranks whose rows start mid-tile (offset 70: positives cross tile boundaries),
    with the forward's columns split between programs and a backward of two strips."""
    from convirt_fast.kernels import triton_loss

    triton_loss.FWD_WAVES, triton_loss.STRIP_COLS_MAX = 4, 128  # this worker process only
    check_functional(rank, [70, 130], "triton", 0.75, 64)


class PairModel(nn.Module):
    """Two linear "encoders" and the loss with a learnable temperature, as a trainer wires them."""

    def __init__(self, gather, backend):
        super().__init__()
        self.img = nn.Linear(12, 8)
        self.txt = nn.Linear(10, 8)
        self.loss = ConVIRTLoss(tau=0.1, lam=0.75, learnable_tau=True, gather=gather, backend=backend)

    def forward(self, a, b):
        return self.loss(self.img(a), self.txt(b))


def check_ddp(rank, sizes, backend):
    """One DDP step on unequal per-rank batches equals one single-process step on their concatenation."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(0)  # same initial weights on every rank and in the single-process copy
    model = PairModel(gather=True, backend=backend)
    single = copy.deepcopy(model)
    g = torch.Generator().manual_seed(1)
    a_all, b_all = torch.randn(sum(sizes), 12, generator=g), torch.randn(sum(sizes), 10, generator=g)
    off, m = sum(sizes[:rank]), sizes[rank]
    ddp = DDP(model)
    loss = ddp(a_all[off:off + m], b_all[off:off + m])
    loss.backward()

    ref = convirt_loss_reference(single.img(a_all), single.txt(b_all), single.loss.tau, 0.75)
    ref.backward()
    assert abs(loss.item() - ref.item()) < 1e-5
    for (name, p), q in zip(model.named_parameters(), single.parameters()):
        assert q.grad.abs().max() > 0, name  # a real gradient, compared next
        assert rel_err(p.grad, q.grad) < 1e-4, (name, rel_err(p.grad, q.grad))


def check_empty_rank_refused(rank):
    img = torch.randn(0 if rank == 1 else 3, 8)
    with pytest.raises(ValueError, match="at least one pair on every rank"):
        convirt_loss_gathered(img, img.clone(), 0.1, 0.75, backend="torch")


def _worker(rank, init_file, checks):
    faulthandler.enable(all_threads=True)  # a native abort prints where every thread was
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        for name, args in checks:
            globals()[name](rank, *args)
        dist.barrier()  # leave together: no rank tears gloo down while the other still talks to it
    finally:
        dist.destroy_process_group()
    # Every check passed and the group is gone: exit without interpreter finalization. Twice in
    # CI a worker aborted with "terminate called without an active exception" (SIGABRT: a C++
    # thread object destroyed while running, i.e. teardown) after its checks; repeated local runs
    # under load (2026-12-01) never showed it, so the exact spot is unknown: faulthandler names it
    # if it happens before this line.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def spawn(checks):
    with tempfile.TemporaryDirectory() as tmp:
        mp.spawn(_worker, args=(os.path.join(tmp, "init"), checks), nprocs=WORLD, join=True)


def test_gathered_loss_matches_single_process():
    checks = [
        ("check_functional", ([4, 4], "torch")),
        ("check_functional", ([3, 6], "torch", 0.0)),  # unequal sizes, text->image only
        ("check_functional", ([1, 5], "torch", 1.0)),  # a rank with one pair, image->text only
    ]
    if INTERPRET:
        checks.append(("check_functional", ([3, 6], "triton", 0.75, 70)))
        checks.append(("check_functional_triton_tiles", ()))
    spawn(checks)


def test_ddp_step_matches_single_process():
    spawn([("check_ddp", ([3, 5], "torch")), ("check_empty_rank_refused", ())])
