"""One typed config for a trial, with the paper's settings as defaults and the ablation presets.

Defaults are the paper's best configuration (SPEC §5, Exp4 / `train_v2.sh`). A bad key, type or
value raises ConfigError with one line naming the key, before any training starts.
"""
import dataclasses
from dataclasses import dataclass, fields

MODELS = ("attention", "attention_robust", "attention_robust_v2")
PROXY_ATTENTION_KINDS = ("per_modality", "joint")


class ConfigError(ValueError):
    """A config key that does not exist, has the wrong type, or is out of range."""


@dataclass(frozen=True)
class TrialConfig:
    model: str = "attention_robust_v2"
    feat_type: str = "utt"  # 'utt' (one vector per sample) or 'frm' (frame sequences, LSTM encoders)
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
    proxy_attention: str = "per_modality"  # the seeds' design; 'joint' attends over all 3 tokens at once
    fusion_temperature: float = 0.8
    # modality dropout (attention_robust, attention_robust_v2)
    use_modality_dropout: bool = True
    modality_dropout: float = 0.2
    modality_dropout_warmup: int = 15
    # optimisation (SPEC §3)
    lr: float = 3e-4
    weight_decay: float = 1e-4
    batch_size: int = 32
    epochs: int = 150
    patience: int = 40
    min_delta: float = 0.001
    grad_clip: float = -1.0  # clip gradients by value; -1 = off (MERBench's default)
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
        need(self.feat_type in ("utt", "frm"), "feat_type", "'utt' or 'frm'")
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
        need(self.lr > 0, "lr", "> 0")
        need(self.grad_clip == -1 or self.grad_clip > 0, "grad_clip", "-1 (off) or > 0")

    def replace(self, **changes) -> "TrialConfig":
        return make_config(self.to_dict(), **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


# The paper's ablations (SPEC §5; seeds/004 §4.2 and §7.2). All run attention_robust_v2 with the
# paper's training settings (the defaults); only these keys differ.
EXPERIMENTS = {
    "Exp1": dict(use_vae=False, use_proxy_attention=False, modality_dropout=0.2, modality_dropout_warmup=0),
    "Exp2": dict(use_vae=True, use_proxy_attention=False, kl_weight=0.01, recon_weight=0.1,
                 cross_kl_weight=0.01, fusion_temperature=1.0, modality_dropout=0.2, modality_dropout_warmup=0),
    "Exp3": dict(use_vae=True, use_proxy_attention=True, kl_weight=0.01, recon_weight=0.1,
                 cross_kl_weight=0.01, fusion_temperature=1.0, modality_dropout=0.2, modality_dropout_warmup=0),
    "Exp4": dict(use_vae=True, use_proxy_attention=True, kl_weight=0.005, recon_weight=0.15,
                 cross_kl_weight=0.01, fusion_temperature=0.8, modality_dropout=0.2, modality_dropout_warmup=15),
    "Exp5": dict(use_vae=False, use_proxy_attention=True, fusion_temperature=1.0, modality_dropout=0.2,
                 modality_dropout_warmup=0),
}
EXPERIMENT_NAMES = {"Exp1": "V1 baseline", "Exp2": "VAE only", "Exp3": "VAE + proxy",
                    "Exp4": "full P-RMF", "Exp5": "no VAE"}


# One line per preset for --help and the README, in the user's words (a preset without a line still runs).
EXPERIMENT_HELP = {
    "Exp1": "baseline: no VAE, no proxy attention (modality dropout 0.2 from epoch 1)",
    "Exp2": "+ VAE (KL 0.01, reconstruction 0.1), no proxy attention",
    "Exp3": "+ VAE and proxy attention (temperature 1.0)",
    "Exp4": "full P-RMF, the paper's best: VAE (KL 0.005, recon 0.15), proxy attention (temperature 0.8),\n"
            "           modality dropout ramped up over the first 15 epochs",
    "Exp5": "proxy attention without the VAE (temperature 1.0)",
}


def experiments_help() -> str:
    """The presets, one per line, for an argparse epilog."""
    return "\n".join(f"  {name:<8} {EXPERIMENT_HELP.get(name, '')}".rstrip() for name in EXPERIMENTS)


def experiment_config(name: str, **changes) -> TrialConfig:
    if name not in EXPERIMENTS:
        raise ConfigError(f"unknown experiment {name!r} (known: {', '.join(EXPERIMENTS)})")
    return make_config({"model": "attention_robust_v2", **EXPERIMENTS[name]}, **changes)
