"""Adam and AdamW over a pack's stacked parameters [M, ...] (prmf/engine.py), one member per slot.

torch's fused kernels do the arithmetic (prmf/torch_private.py says why a private call, and which
test pins every member's step to torch.optim.Adam / AdamW).
"""
import torch

from .torch_private import fused_adam_step

BETAS, EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's and AdamW's defaults


class StackedAdam:
    """torch.optim.Adam (coupled L2: MERBench's `Adam(lr, weight_decay=l2)`) or torch.optim.AdamW
    over parameters [M, ...], every member with its own kind, learning rate, weight decay and step
    count: torch's fused kernel on the whole stacks when every member steps alike (the usual case),
    else on per-member views, one call per distinct (kind, lr, weight decay, step)."""

    def __init__(self, params):
        self.params = list(params)
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = [0] * self.params[0].shape[0]  # per member, as AdamW's `step`

    @torch.no_grad()
    def step(self, positions, hyper):
        """Steps of the members at `positions`; hyper[i] = (kind, lr, weight decay) of position i,
        kind 'adam' or 'adamw'."""
        for i in positions:
            self.steps[i] += 1
        groups = {}
        for i in positions:
            groups.setdefault((*hyper[i], self.steps[i]), []).append(i)
        device = self.params[0].device
        for (kind, lr, wd, step), group in groups.items():
            count = torch.tensor(float(step), device=device)  # read by the kernel for the bias corrections
            if len(group) == len(self.steps):  # every member: the stacks themselves
                ps, gs, ms, vs = self.params, [p.grad for p in self.params], self.exp_avg, self.exp_avg_sq
            else:
                ps = [p[i] for i in group for p in self.params]
                gs = [p.grad[i] for i in group for p in self.params]
                ms = [a[i] for i in group for a in self.exp_avg]
                vs = [a[i] for i in group for a in self.exp_avg_sq]
            fused_adam_step(kind, ps, gs, ms, vs, count, lr, wd, BETAS, EPS)

    def keep(self, index, params):
        """Follow the model when it keeps only the members at `index` (a LongTensor)."""
        self.params = list(params)
        self.exp_avg = [a.index_select(0, index) for a in self.exp_avg]
        self.exp_avg_sq = [a.index_select(0, index) for a in self.exp_avg_sq]
        self.steps = [self.steps[i] for i in index.tolist()]

    def state_dict(self):
        return {"exp_avg": self.exp_avg, "exp_avg_sq": self.exp_avg_sq, "steps": torch.tensor(self.steps)}

    @torch.no_grad()
    def load_state_dict(self, state):
        for mine, saved in zip(self.exp_avg + self.exp_avg_sq, state["exp_avg"] + state["exp_avg_sq"]):
            mine.copy_(saved)
        self.steps = state["steps"].tolist()
