"""The schedules a member follows epoch by epoch: its modality-dropout rate (the ramp) and its
learning rate (constant, as MERBench's main-release.py, or ReduceLROnPlateau), written once here.
Epochs count from 1 (docs/FIDELITY.md #17)."""
import math


def modality_dropout_rate(cfg, epoch: int) -> float:
    """p(e), epochs counted from 1. 'warmup' (the published code's): 0 through e_w, then
    p_max*min(1, (e-e_w)/e_w), p_max from 2*e_w on; no warm-up: p_max throughout. 'last_epoch' (the
    paper's text): 0 through e_w, then p_max*min(1, (e-e_w)/(E-e_w)) with E = modality_dropout_ramp_end.
    Neither depends on cfg.epochs."""
    p_max, warm = cfg.modality_dropout, cfg.modality_dropout_warmup
    if cfg.ramp == "warmup":
        return p_max if warm <= 0 else p_max * min(1.0, max(0, epoch - warm) / warm)
    return p_max * min(1.0, max(0, epoch - warm) / (cfg.modality_dropout_ramp_end - warm))


def full_rate_epoch(cfg) -> int:
    """The first epoch at which the ramp reaches p_max."""
    return 2 * cfg.modality_dropout_warmup if cfg.ramp == "warmup" else cfg.modality_dropout_ramp_end


class Plateau:
    """torch.optim.lr_scheduler.ReduceLROnPlateau(mode='max', factor=0.5, patience=10, min_lr=1e-6),
    the published schedule, for one member's learning rate. Written out because any torch.optim object
    imports torch._dynamo (~1.2 s of every trial's start); tests/test_engine.py pins it to torch's."""

    FACTOR, PATIENCE, MIN_LR, THRESHOLD, EPS = 0.5, 10, 1e-6, 1e-4, 1e-8

    def __init__(self, lr):
        self.lr, self.best, self.bad_epochs = lr, -math.inf, 0

    def step(self, metric):
        if metric > self.best * (1 + self.THRESHOLD):  # torch's 'rel' threshold in mode 'max'
            self.best, self.bad_epochs = metric, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs > self.PATIENCE:
            new = max(self.lr * self.FACTOR, self.MIN_LR)
            if self.lr - new > self.EPS:
                self.lr = new
            self.bad_epochs = 0

    def state_dict(self):
        return {"lr": self.lr, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state):
        self.lr, self.best, self.bad_epochs = state["lr"], state["best"], state["bad_epochs"]


class Constant:
    """A learning rate that never changes: MERBench's main-release.py has no schedule."""

    def __init__(self, lr):
        self.lr = lr

    def step(self, metric):
        pass

    def state_dict(self):
        return {"lr": self.lr}

    def load_state_dict(self, state):
        self.lr = state["lr"]


SCHEDULES = {"constant": Constant, "plateau": Plateau}
