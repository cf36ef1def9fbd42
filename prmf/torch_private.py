"""Every private torch call of the project, in one place: the first file to read after a torch upgrade.

Each is used because no public call does the job without a cost the engine cannot pay, and each is
pinned by a test to the public API it stands for:

- `torch._fused_adam_` / `torch._fused_adamw_` (fused_adam_step): Adam/AdamW over views of the
  stacked members' parameters with per-member hyperparameters; torch.optim's classes would need one
  optimiser per member and import torch._dynamo (~1.2 s per trial). Pinned to torch.optim.Adam and
  AdamW by tests/test_engine.py::test_stacked_adam_is_torchs_adam_or_adamw_for_every_member.
- `torch._VF.lstm` (lstm_last_hidden): the kernel behind nn.LSTM with a member's weights passed in,
  which no public call takes without a module per member. Pinned to nn.LSTM by
  tests/test_model_components.py (each member's last hidden state equals nn.LSTM's).
- `torch._C._cpu._get_cpu_capability` (cpu_capabilities): the CPU's bf16 flags, which
  torch.backends.cpu.get_cpu_capability() does not name. Pinned to /proc/cpuinfo's flags by
  tests/test_torch_private.py where that file exists.
"""
import torch
from torch import _VF


def fused_adam_step(kind, params, grads, exp_avgs, exp_avg_sqs, step, lr, weight_decay, betas, eps):
    """One Adam (coupled L2) or AdamW step of `params` in place; `step` a float tensor (the kernel
    reads it for the bias corrections), one per parameter."""
    fused = torch._fused_adam_ if kind == "adam" else torch._fused_adamw_
    fused(params, grads, exp_avgs, exp_avg_sqs, [], [step] * len(params), amsgrad=False, lr=lr, beta1=betas[0],
          beta2=betas[1], weight_decay=weight_decay, eps=eps, maximize=False, grad_scale=None, found_inf=None)


def lstm_last_hidden(packed, h0, weights, training):
    """nn.LSTM's (one layer, batch first, no dropout) final hidden state [1, B, H] of a packed
    sequence, with the weights [w_ih, w_hh, b_ih, b_hh] given."""
    _, h, _ = _VF.lstm(packed.data, packed.batch_sizes, (h0, h0), weights, True, 1, 0.0, training, False)
    return h


def cpu_capabilities() -> dict:
    """The x86 feature flags torch detected ({} on other CPUs or where torch does not say)."""
    return getattr(torch._C._cpu, "_get_cpu_capability", dict)()
