"""Models looked up by their MERBench names, each written once with a member axis first."""
from .attention import Attention, AttentionRobust
from .layers import init_member
from .robust_v2 import AttentionRobustV2

MODEL_CLASSES = {"attention": Attention, "attention_robust": AttentionRobust, "attention_robust_v2": AttentionRobustV2}


def build_model(cfg, dims, n_classes, members=None, seed_folds=None, init=True):
    """dims: input sizes of (audio, text, video). `members`: one config per member (default [cfg]:
    one model); they share cfg's architecture. `seed_folds`: (seed, fold) per member, whose initial
    weights are the fold-th model drawn from a generator seeded with seed, as torch's own modules
    draw them (default: one draw per member from torch's global generator, like nn.Linear);
    init=False leaves them zero (for weights loaded next)."""
    model = MODEL_CLASSES[cfg.model](cfg, dims, n_classes, members)
    if not init:
        return model
    if seed_folds is None:
        for m in range(model.n_members):
            init_member(model, [m], None)
        return model
    import torch
    for seed in sorted({s for s, _ in seed_folds}):
        gen = torch.Generator().manual_seed(seed)
        last = max(k for s, k in seed_folds if s == seed)
        for fold in range(last + 1):
            init_member(model, [m for m, sk in enumerate(seed_folds) if sk == (seed, fold)], gen)
    return model


def n_params(model) -> int:
    """Trainable parameters of one member (also those that get no gradient; MERBench counts the same)."""
    return sum(p[0].numel() for p in model.parameters() if p.requires_grad)
