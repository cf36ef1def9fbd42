"""`--pack auto` decides from measured step times (sweeps/pack_choice.py): the prediction of a
sweep's training time, the choice and its margin, the measurement on a real engine, the cache."""
import json

import pytest

from prmf.config import preset_config
from sweeps import pack_choice


def timings(step1, step_largest, largest, build=0.0):
    return {1: {"step": step1, "build": build}, largest: {"step": step_largest, "build": build}}


def test_prediction_counts_rounds_of_slots_and_the_largest_balanced_pack():
    t = timings(1.0, 5.0, 5)  # a step costs 1 s per trial at every size: packing gains nothing
    assert pack_choice.predict(9, 2, 1, t, steps=10) == 5 * 10  # 9 trials alone on 2 slots: 5 rounds
    assert pack_choice.predict(9, 2, 5, t, steps=10) == 1 * 5 * 10  # packs of 5/4 side by side: one round of 5
    assert pack_choice.predict(9, 2, 3, t, steps=10) == 2 * 3 * 10  # 3 packs of 3 on 2 slots: two rounds
    t = {1: {"step": 1.0, "build": 2.0}, 3: {"step": 1.5, "build": 3.0}, 5: {"step": 2.0, "build": 6.0}}
    assert pack_choice.predict(4, 1, 4, t, steps=10) == pytest.approx(4.5 + 10 * 1.75)  # between measured sizes


def test_packs_are_chosen_only_when_predicted_faster_by_the_margin():
    size, reason = pack_choice.choose(9, 2, 5, timings(1.0, 2.0, 5), steps=100)  # a pack of 5 at 2.5x the throughput
    assert size == 5 and reason.endswith("in packs of 5") and "2.50x" in reason
    size, reason = pack_choice.choose(9, 2, 5, timings(1.0, 5.5, 5), steps=100)  # packs slower per trial
    assert size == 1 and "one trial per pack" in reason and "0.91x" in reason and "550 s in packs of 5" in reason
    # 9 alone on 2 slots: 5 rounds of 1.0; packs of 5: one round of 4.6 s per step, 8% faster: within the margin
    size, reason = pack_choice.choose(9, 2, 5, timings(1.0, 4.6, 5), steps=100)
    assert size == 1 and "less than 10%" in reason


def test_measured_step_times_grow_with_the_pack_on_a_real_engine(tiny_data):
    cfg = preset_config("Exp4", hidden_dim=16, batch_size=64)
    specs = [{"cfg": cfg.replace(kl_weight=0.001 * (i + 1)).to_dict(), "seed": 0, "folds": 5} for i in range(4)]
    found = pack_choice.measure(specs, tiny_data, cpus=1)
    assert set(found) == {1, 4}
    assert all(t["step"] > 0 and t["build"] > 0 for t in found.values())
    assert found[4]["step"] > found[1]["step"]  # 20 members do more work per step than 5


def test_timings_are_cached_per_machine_kind_resources_and_shapes(tiny_data, data_dir, monkeypatch):
    cfg = preset_config("Exp4", hidden_dim=16, batch_size=64)
    group = [{"cfg": cfg.replace(kl_weight=0.001 * (i + 1)).to_dict(), "seed": 0, "folds": 5} for i in range(4)]
    path = pack_choice.cache_path()
    assert path.parent == data_dir  # PRMF_DATA_DIR, beside the generated data
    measured = []

    def in_process(specs, data, cpus, gpus, copies):  # the Ray tasks' measure(), here: a real engine each
        measured.append((len(specs), cpus, copies))
        return [pack_choice.measure(specs, data, cpus) for _ in range(copies)]
    monkeypatch.setattr(pack_choice, "_measure_on_workers", in_process)
    first, seconds = pack_choice.timings(group, tiny_data, 3, 2, 1, 0)
    assert seconds > 0 and measured == [(3, 1, 2)] and set(first) == {1, 3}
    again, seconds = pack_choice.timings(group, tiny_data, 3, 2, 1, 0)
    assert seconds is None and again == first and len(measured) == 1  # from the cache
    _, seconds = pack_choice.timings(group, tiny_data, 3, 1, 2, 0)  # other threads, other slots: measured anew
    assert seconds > 0 and len(measured) == 2
    assert len(json.loads(path.read_text())) >= 2
    path.write_text(json.dumps({k: {"seconds": 1.0} for k in json.loads(path.read_text())}))  # entries of another shape
    _, seconds = pack_choice.timings(group, tiny_data, 3, 2, 1, 0)
    assert seconds > 0 and len(measured) == 3
    path.write_text("{not json")  # a damaged cache is measured again and rewritten, not an error
    _, seconds = pack_choice.timings(group, tiny_data, 3, 2, 1, 0)
    assert seconds > 0 and len(json.loads(path.read_text())) == 1
