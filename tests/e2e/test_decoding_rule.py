"""Both sides decode by one rule: greedy on raw logits, whatever the checkpoint's generation_config.json asks.

A copy of tiny-llama whose generation_config.json sets repetition_penalty 5 and no_repeat_ngram_size 2 (real
checkpoints ship such settings: several Qwen2.5 instruct models set repetition_penalty 1.05) must pass on a clean
device like tiny-llama itself; before, the reference applied them (transformers' generate does at
do_sample=False) and the device did not, and the scored sequence was a penalised continuation the model would
not write: two KL checks failed."""
import json
import shutil

import pytest

PENALISED = {"repetition_penalty": 5.0, "no_repeat_ngram_size": 2}


@pytest.fixture
def penalised_llama(tiny_llama, tmp_path):
    """A model root holding npuprec/tiny-llama-penalised: tiny-llama's files, generation_config.json penalised."""
    folder = tmp_path / "models" / "npuprec" / "tiny-llama-penalised"
    shutil.copytree(tiny_llama, folder)
    path = folder / "generation_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **PENALISED}, indent=2))
    return folder


def test_reference_ignores_generation_config(tiny_llama, penalised_llama):
    """The FP32 reference's continuations are the same with and without the penalties in the checkpoint."""
    from pytest_npuprec.runners.reference import TransformersRunner

    prompts = [[1, 40, 97, 300, 12], [1, 5, 6, 7]]
    outs = []
    for folder in (tiny_llama, penalised_llama):
        with TransformersRunner(folder) as ref:
            outs.append(ref.generate(prompts, 24))
    assert outs[0] == outs[1], "the reference applied the checkpoint's generation_config"
    from pytest_npuprec.runners import decoding

    assert decoding.ignored_settings(penalised_llama) == PENALISED
    assert decoding.describe(penalised_llama).endswith(
        "generation_config ignored: repetition_penalty=5.0, no_repeat_ngram_size=2")


def test_penalised_checkpoint_passes_on_a_clean_device(run_suite, repo_config_dir, penalised_llama, tmp_path):
    configs = tmp_path / "configs"
    configs.mkdir()
    text = (repo_config_dir / "tiny-llama.yaml").read_text()
    assert 'model_name: "npuprec/tiny-llama"\nstand_in: tiny-llama\n' in text
    text = text.replace('model_name: "npuprec/tiny-llama"\nstand_in: tiny-llama\n',
                        'model_name: "npuprec/tiny-llama-penalised"\n', 1)
    drift = "  drift:\n    kl_divergence: 50%\n    relative_l2: 25%\n"
    assert drift in text
    text = text.replace(drift, "")  # no device record of this copy: drift is not what this test is about
    (configs / "tiny-llama-penalised.yaml").write_text(text)
    model_root = penalised_llama.parents[1]
    result, report_dir = run_suite("tiny-llama-penalised", "--npuprec-model-root", str(model_root),
                                   "--npuprec-reference", "live", config_dir=configs)
    out = result.stdout.str()
    report = json.loads((report_dir / "tiny-llama-penalised.json").read_text())
    failed = [c["check"] for c in report["checks"] if not c["passed"]]
    assert result.ret == pytest.ExitCode.OK, (failed, out[-4000:])
    decoding = report["run"]["decoding"]
    assert decoding.startswith("greedy on raw logits") and "repetition_penalty=5.0" in decoding \
        and "no_repeat_ngram_size=2" in decoding, decoding
    assert "decoding (both sides): greedy on raw logits" in out
