"""One typed config for a trial, with the paper's settings as defaults and the table's presets.

Defaults are the paper's best configuration (Exp4, as the published `train_v2.sh` runs it). A bad key, type or
value raises ConfigError with one line naming the key, before any training starts. `fidelity`
chooses what a dropped or missing modality does: the published file behind the table (default), the
design plan's code, or the paper's equations; the training loop (optimiser, schedule, clipping) is
set per preset (docs/FIDELITY.md lists every difference and the key that selects it). `precision`
chooses the float arithmetic: fp32 (default: the published runs'), bf16-mixed or tf32 (prmf/precision.py).
"""
import dataclasses
from dataclasses import dataclass, fields

from .compat import RENAMED, id_dict

MODELS = ("attention", "attention_robust", "attention_robust_v2")
PROXY_ATTENTION_KINDS = ("per_modality", "joint")
FIDELITY_MODES = ("published", "design_plan", "paper")
RAMPS = ("auto", "warmup", "last_epoch")  # auto: 'last_epoch' under paper, else 'warmup' (the published code's)
OPTIMIZERS = ("adam", "adamw")  # adam: torch.optim.Adam(lr, weight_decay) = coupled L2 (MERBench); adamw: decoupled
LR_SCHEDULES = ("constant", "plateau")
FEAT_TYPES = ("utt", "frm_unalign")  # MERBench's names; 'frm_align' (align-to-text pooling) is not built
PRECISIONS = ("fp32", "bf16-mixed", "tf32")  # bf16-mixed: autocast, fp32 master weights; tf32: CUDA matmuls only


class ConfigError(ValueError):
    """A config key that does not exist, has the wrong type, or is out of range."""


@dataclass(frozen=True)
class TrialConfig:
    model: str = "attention_robust_v2"
    fidelity: str = "published"  # the published code; 'design_plan': the design plan's code; 'paper': the equations
    feat_type: str = "utt"  # 'utt' (one vector per sample) or 'frm_unalign' (frame sequences, LSTM encoders)
    precision: str = "fp32"  # the published runs'; 'bf16-mixed' (autocast) or 'tf32' (CUDA): prmf/precision.py
    # architecture
    hidden_dim: int = 128
    dropout: float = 0.4
    num_attention_heads: int = 4
    # VAE (attention_robust_v2)
    use_vae: bool = True
    kl_weight: float = 0.005
    recon_weight: float = 0.15
    cross_kl_weight: float = 0.01
    # proxy modality
    use_proxy_attention: bool = True
    proxy_attention: str = "per_modality"  # the published design; 'joint' attends over all 3 tokens at once
    fusion_temperature: float = 0.8
    # modality dropout (attention_robust, attention_robust_v2)
    use_modality_dropout: bool = True
    modality_dropout: float = 0.2
    modality_dropout_warmup: int = 15
    modality_dropout_ramp: str = "auto"  # 'warmup': 0 to p_max over e_w..2e_w (code); 'last_epoch': to E (paper)
    modality_dropout_ramp_end: int = 150  # the paper's E; never --epochs, so a short run keeps the schedule
    modality_dropout_z: bool = True  # published: a dropped modality's z is zeroed too (the decoders see zeros)
    # optimisation (docs/FIDELITY.md: the training loop)
    lr: float = 3e-4
    weight_decay: float = 1e-4
    batch_size: int = 32
    epochs: int = 150
    patience: int = 40
    min_delta: float = 0.001
    optimizer: str = "adamw"  # 'adam' (coupled L2, MERBench's main-release.py) or 'adamw'
    lr_schedule: str = "plateau"  # 'constant' (MERBench) or 'plateau' (ReduceLROnPlateau, max, 0.5, 10, 1e-6)
    grad_clip: float = 1.0  # clip gradients by value (MERBench's clip_grad_value_); -1 = off
    emo_weight: float = 1.0
    val_weight: float = 1.0

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            want = f.type
            if want is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
            elif not isinstance(value, want) or (want is int and isinstance(value, bool)):
                raise ConfigError(f"config key {f.name!r}: expected {want.__name__}, got {value!r}")
        self._check_ranges()

    def _check_ranges(self):
        def need(ok, key, rule):
            if not ok:
                raise ConfigError(f"config key {key!r}: must be {rule}, got {getattr(self, key)!r}")

        need(self.model in MODELS, "model", f"one of {', '.join(MODELS)}")
        if self.fidelity in RENAMED["fidelity"]:
            new = RENAMED["fidelity"][self.fidelity]
            raise ConfigError(f"config key 'fidelity': {self.fidelity!r} is now called {new!r} (the design plan's code: "
                              "modality dropout reaches only the decoders); the default 'published' is the code behind "
                              "the paper's table (docs/FIDELITY.md)")
        need(self.fidelity in FIDELITY_MODES, "fidelity", ", ".join(FIDELITY_MODES))
        need(self.optimizer in OPTIMIZERS, "optimizer", " or ".join(OPTIMIZERS))
        need(self.lr_schedule in LR_SCHEDULES, "lr_schedule", " or ".join(LR_SCHEDULES))
        need(self.modality_dropout_ramp in RAMPS, "modality_dropout_ramp", ", ".join(RAMPS))
        need(self.precision in PRECISIONS, "precision", ", ".join(PRECISIONS))
        need(self.feat_type in FEAT_TYPES, "feat_type", f"one of {', '.join(FEAT_TYPES)} (frm_align is not supported)")
        need(self.ramp != "last_epoch" or self.modality_dropout_ramp_end > self.modality_dropout_warmup,
             "modality_dropout_ramp_end", "> modality_dropout_warmup (the paper's ramp ends after the warm-up)")
        need(self.proxy_attention in PROXY_ATTENTION_KINDS, "proxy_attention", " or ".join(PROXY_ATTENTION_KINDS))
        for key in ("hidden_dim", "num_attention_heads", "batch_size", "epochs", "patience"):
            need(getattr(self, key) >= 1, key, ">= 1")
        need(self.hidden_dim % self.num_attention_heads == 0, "num_attention_heads", "a divisor of hidden_dim")
        for key in ("dropout", "modality_dropout"):
            need(0 <= getattr(self, key) < 1, key, "in [0, 1)")
        for key in ("kl_weight", "recon_weight", "cross_kl_weight", "weight_decay", "min_delta",
                    "emo_weight", "val_weight", "modality_dropout_warmup"):
            need(getattr(self, key) >= 0, key, ">= 0")
        need(self.fusion_temperature > 0, "fusion_temperature", "> 0")
        need(0 < self.lr < float("inf"), "lr", "a finite number > 0")  # NaN fails both comparisons
        need(self.grad_clip == -1 or self.grad_clip > 0, "grad_clip", "-1 (off) or > 0")

    @property
    def ramp(self) -> str:
        if self.modality_dropout_ramp != "auto":
            return self.modality_dropout_ramp
        return "last_epoch" if self.fidelity == "paper" else "warmup"

    def replace(self, **changes) -> "TrialConfig":
        return make_config(self.to_dict(), **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def stable_dict(cfg) -> dict:
    """cfg.to_dict() as trial ids, checkpoints and sweep settings compare it (keys added later, at
    their old value, left out: prmf.compat): a resumed sweep never retrains what it stored before."""
    return id_dict(cfg.to_dict())


def make_config(base: dict | None = None, **changes) -> TrialConfig:
    """Build a config from dicts, naming any unknown key in the error."""
    values = {**(base or {}), **changes}
    known = {f.name for f in fields(TrialConfig)}
    for key in values:
        if key not in known:
            raise ConfigError(f"unknown config key {key!r} (known: {', '.join(sorted(known))})")
    return TrialConfig(**values)


def parse_value(key: str, text: str):
    """Parse `--set key=value` text into the type of that config field."""
    types = {f.name: f.type for f in fields(TrialConfig)}
    if key not in types:
        raise ConfigError(f"unknown config key {key!r} (known: {', '.join(sorted(types))})")
    want = types[key]
    try:
        if want is bool:
            if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return text.lower() in ("true", "1", "yes")
        return want(text)
    except ValueError:
        raise ConfigError(f"config key {key!r}: cannot read {text!r} as {want.__name__}") from None


def parse_sets(items) -> dict:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, text = item.split("=", 1)
        out[key.strip()] = parse_value(key.strip(), text.strip())
    return out


# Keys in which the members of one batched model may differ (prmf/engine.py): loss weights,
# temperatures, dropout rates and their schedule, optimiser, learning rate and its schedule, weight
# decay, early-stopping delta. Every other key (model, architecture, fidelity, precision, gradient
# clipping, epochs, patience, batch size...) splits a grid into packs.
MEMBER_KEYS = ("kl_weight", "recon_weight", "cross_kl_weight", "fusion_temperature", "dropout", "use_modality_dropout",
               "modality_dropout", "modality_dropout_warmup", "modality_dropout_ramp", "modality_dropout_ramp_end",
               "optimizer", "lr_schedule", "lr", "weight_decay", "min_delta", "emo_weight", "val_weight")


def pack_key(cfg) -> tuple:
    """What members of one pack share: every config key but MEMBER_KEYS."""
    return tuple(sorted((k, v) for k, v in cfg.to_dict().items() if k not in MEMBER_KEYS))


def for_data(cfg, data_feat_type: str):
    """The config for a data set: frame-level (-FRA) folders select the frame-level encoders
    (MERBench's frm_unalign); a frame-level feat_type on utterance-level folders is an error."""
    if data_feat_type == "utt":
        if cfg.feat_type != "utt":
            raise ConfigError(f"config key 'feat_type': {cfg.feat_type!r} needs frame-level (-FRA) feature folders; "
                              "these are utterance-level (use 'utt')")
        return cfg
    return cfg.replace(feat_type="frm_unalign") if cfg.feat_type == "utt" else cfg


def effective_config(cfg) -> dict:
    """The config with every key that cannot change the run set to a canonical value (a switched-
    off part is off, its settings the defaults): two presets with equal effective configs train the
    same model the same way (Exp5 == Exp1 except under 'paper')."""
    d, default = cfg.to_dict(), TrialConfig().to_dict()
    v2 = cfg.model == "attention_robust_v2"
    vae = v2 and cfg.use_vae
    proxy = v2 and cfg.use_proxy_attention and (cfg.use_vae or cfg.fidelity == "paper")  # builds_proxy_attention
    dropout = cfg.model != "attention" and cfg.use_modality_dropout and cfg.modality_dropout > 0
    d["modality_dropout_ramp"] = cfg.ramp
    off = {}
    if not vae:
        off |= {"use_vae": False, **{k: default[k] for k in ("kl_weight", "recon_weight", "cross_kl_weight",
                                                              "fusion_temperature")}}
    if not proxy:
        off |= {"use_proxy_attention": False, "proxy_attention": default["proxy_attention"],
                "num_attention_heads": default["num_attention_heads"]}
    if not dropout:
        off |= {"use_modality_dropout": False, "modality_dropout": 0.0, "modality_dropout_warmup": 0,
                "modality_dropout_ramp": "auto"}
    if not dropout or cfg.ramp == "warmup":
        off["modality_dropout_ramp_end"] = default["modality_dropout_ramp_end"]
    if not (vae and dropout and cfg.fidelity == "published"):
        off["modality_dropout_z"] = default["modality_dropout_z"]
    return d | off


# The rows of the paper's table (its ablation script run_ablation.sh). Each preset writes out every
# training setting, its loop included: the baselines train in MERBench's main-release.py loop (Adam
# with coupled L2, constant lr, no clipping: model-tune.yaml's attention grad_clip -1), the V2 rows
# clip by value at 1.0 (the design plan's model-tune.yaml) with AdamW and the plateau schedule (the
# published scripts do not name the V2 runner's optimiser). docs/FIDELITY.md gives the source of each value.
# `fidelity` and `precision` are not part of a preset: every preset runs in every mode and precision.
PRESETS = {
    "attention": dict(
        model="attention", hidden_dim=128, dropout=0.4, num_attention_heads=4,
        use_vae=False, kl_weight=0.01, recon_weight=0.1, cross_kl_weight=0.01,
        use_proxy_attention=False, proxy_attention="per_modality", fusion_temperature=1.0,
        use_modality_dropout=False, modality_dropout=0.0, modality_dropout_warmup=0,
        optimizer="adam", lr_schedule="constant", grad_clip=-1.0,
        lr=1e-3, weight_decay=1e-5, batch_size=32, epochs=100, patience=100, min_delta=0.001,
        emo_weight=1.0, val_weight=1.0),
    "attention_robust": dict(
        model="attention_robust", hidden_dim=128, dropout=0.4, num_attention_heads=4,
        use_vae=False, kl_weight=0.01, recon_weight=0.1, cross_kl_weight=0.01,
        use_proxy_attention=False, proxy_attention="per_modality", fusion_temperature=1.0,
        use_modality_dropout=True, modality_dropout=0.2, modality_dropout_warmup=0,
        optimizer="adam", lr_schedule="constant", grad_clip=-1.0,
        lr=1e-3, weight_decay=1e-5, batch_size=32, epochs=100, patience=100, min_delta=0.001,
        emo_weight=1.0, val_weight=1.0),
    "Exp1": dict(
        model="attention_robust_v2", hidden_dim=128, dropout=0.4, num_attention_heads=4,
        use_vae=False, kl_weight=0.01, recon_weight=0.1, cross_kl_weight=0.01,
        use_proxy_attention=False, proxy_attention="per_modality", fusion_temperature=1.0,
        use_modality_dropout=True, modality_dropout=0.2, modality_dropout_warmup=0,
        optimizer="adamw", lr_schedule="plateau", grad_clip=1.0,
        lr=3e-4, weight_decay=1e-4, batch_size=32, epochs=150, patience=40, min_delta=0.001,
        emo_weight=1.0, val_weight=1.0),
    "Exp2": dict(
        model="attention_robust_v2", hidden_dim=128, dropout=0.4, num_attention_heads=4,
        use_vae=True, kl_weight=0.01, recon_weight=0.1, cross_kl_weight=0.01,
        use_proxy_attention=False, proxy_attention="per_modality", fusion_temperature=1.0,
        use_modality_dropout=True, modality_dropout=0.2, modality_dropout_warmup=0,
        optimizer="adamw", lr_schedule="plateau", grad_clip=1.0,
        lr=3e-4, weight_decay=1e-4, batch_size=32, epochs=150, patience=40, min_delta=0.001,
        emo_weight=1.0, val_weight=1.0),
    "Exp3": dict(
        model="attention_robust_v2", hidden_dim=128, dropout=0.4, num_attention_heads=4,
        use_vae=True, kl_weight=0.01, recon_weight=0.1, cross_kl_weight=0.01,
        use_proxy_attention=True, proxy_attention="per_modality", fusion_temperature=1.0,
        use_modality_dropout=True, modality_dropout=0.2, modality_dropout_warmup=0,
        optimizer="adamw", lr_schedule="plateau", grad_clip=1.0,
        lr=3e-4, weight_decay=1e-4, batch_size=32, epochs=150, patience=40, min_delta=0.001,
        emo_weight=1.0, val_weight=1.0),
    "Exp4": dict(
        model="attention_robust_v2", hidden_dim=128, dropout=0.4, num_attention_heads=4,
        use_vae=True, kl_weight=0.005, recon_weight=0.15, cross_kl_weight=0.01,
        use_proxy_attention=True, proxy_attention="per_modality", fusion_temperature=0.8,
        use_modality_dropout=True, modality_dropout=0.2, modality_dropout_warmup=15,
        optimizer="adamw", lr_schedule="plateau", grad_clip=1.0,
        lr=3e-4, weight_decay=1e-4, batch_size=32, epochs=150, patience=40, min_delta=0.001,
        emo_weight=1.0, val_weight=1.0),
    "Exp5": dict(
        model="attention_robust_v2", hidden_dim=128, dropout=0.4, num_attention_heads=4,
        use_vae=False, kl_weight=0.01, recon_weight=0.1, cross_kl_weight=0.01,
        use_proxy_attention=True, proxy_attention="per_modality", fusion_temperature=1.0,
        use_modality_dropout=True, modality_dropout=0.2, modality_dropout_warmup=0,
        optimizer="adamw", lr_schedule="plateau", grad_clip=1.0,
        lr=3e-4, weight_decay=1e-4, batch_size=32, epochs=150, patience=40, min_delta=0.001,
        emo_weight=1.0, val_weight=1.0),
}
PRESET_DESCRIPTIONS = {  # one line each, for help texts
    "attention": "Baseline (v0): MERBench's attention fusion, raw fc_att scores, no modality dropout",
    "attention_robust": "Robust v1 (Dropout): MERBench encoders, softmax attention, modality dropout on the hiddens",
    "Exp1": "V1 baseline: attention_robust_v2 without VAE or proxy (modality dropout 0.2)",
    "Exp2": "VAE only: variational encoders + uncertainty-weighted proxy, no proxy attention",
    "Exp3": "VAE + proxy: Exp2 plus proxy cross-modal attention, default weights",
    "Exp4": "full P-RMF: the paper's tuned config (kl 0.005, recon 0.15, tau 0.8, warm-up 15)",
    "Exp5": "no VAE: proxy attention without the VAE (published, design_plan: the same run as Exp1)",
}


def preset_config(name: str, **changes) -> TrialConfig:
    """The config of a table row, with `changes` (--set, --epochs, ...) on top."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r} (known: {', '.join(PRESETS)})")
    return make_config(PRESETS[name], **changes)



def experiments_help() -> str:
    """The presets, one per line, for an argparse epilog."""
    return "\n".join(f"  {name:<17} {PRESET_DESCRIPTIONS.get(name, '')}".rstrip() for name in PRESETS)
