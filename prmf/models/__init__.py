"""Models looked up by their MERBench names."""
from .attention import Attention, AttentionRobust
from .robust_v2 import AttentionRobustV2

MODEL_CLASSES = {"attention": Attention, "attention_robust": AttentionRobust, "attention_robust_v2": AttentionRobustV2}


def build_model(cfg, dims, n_classes):
    """dims: input sizes of (audio, text, video)."""
    return MODEL_CLASSES[cfg.model](cfg, dims, n_classes)
