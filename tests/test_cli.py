"""The `condense` CLI: commands work end to end and bad input gives one line and the documented exit code."""
import json
import pickle

import pytest

from condense.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_and_datasets_json(capsys):
    code, out, _ = run(capsys, "models", "--json")
    assert code == 0 and {"cnn", "resnet", "mobilenetv2", "vgg", "mlp"} <= {r["name"] for r in json.loads(out)}
    code, out, _ = run(capsys, "datasets", "--json")
    assert code == 0 and {"digits", "cifar10", "mnist", "imagefolder", "csv"} <= {r["name"] for r in json.loads(out)}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "mlp"
    code = main(["train", "--model", "mlp", "--model-arg", "hidden=[32]", "--epochs", "2", "--out", str(out), "--json"])
    assert code == 0
    return out


def test_train_eval_profile_export_distill(capsys, trained, tmp_path):
    code, out, _ = run(capsys, "eval", str(trained), "--json")
    m = json.loads(out)
    assert code == 0 and 0.5 < m["accuracy"] <= 1 and len(m["confusion_matrix"]) == 10
    code, out, _ = run(capsys, "profile", str(trained), "--batch-sizes", "1", "4", "--json")
    p = json.loads(out)
    assert code == 0 and set(p["latency"]) == {"torch", "onnxruntime"} and p["artifact_bytes"] > 0
    onnx = tmp_path / "m.onnx"
    code, out, _ = run(capsys, "export", str(trained), "--out", str(onnx), "--json")
    assert code == 0 and onnx.exists() and json.loads(out)["max_abs_diff"] < 1e-4
    code, out, _ = run(capsys, "eval", str(onnx), "--data", "digits", "--json")
    assert code == 0 and json.loads(out)["accuracy"] == pytest.approx(m["accuracy"], abs=0.01)
    code, out, _ = run(capsys, "distill", "--teacher", str(trained), "--student", "mlp", "--student-arg", "hidden=[8]",
                       "--epochs", "4", "--lr", "0.01", "--out", str(tmp_path / "student"), "--json")
    assert code == 0 and json.loads(out)["test_accuracy"] > 0.3


def test_eval_without_a_recorded_dataset_needs_data(capsys, trained, tmp_path):
    from condense.artifacts import load, save

    bare = save(load(trained), tmp_path / "bare")  # saved from Python: no dataset in its metadata
    code, out, err = run(capsys, "eval", str(bare))
    assert code == 2 and out == "" and "--data" in err and "records no dataset" in err
    code, out, _ = run(capsys, "eval", str(bare), "--data", "digits", "--json")
    assert code == 0 and json.loads(out)["n"] > 0


def test_unknown_model_is_exit_2(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--model", "resnett", "--epochs", "1", "--out", str(tmp_path / "x"))
    assert code == 2 and "did you mean: resnet" in err and len(err.strip().splitlines()) == 1


def test_missing_data_folder_is_exit_3(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--data", "cifar10", "--data-arg", f"root={tmp_path / 'nope'}",
                       "--epochs", "1", "--out", str(tmp_path / "x"))
    assert code == 3 and "nope" in err


def test_bad_cifar_pickle_is_refused_exit_3(capsys, tmp_path):
    import os

    root = tmp_path / "cifar"
    root.mkdir()
    sentinel = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {sentinel}",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as fh:
            pickle.dump({b"data": Evil(), b"labels": [0]}, fh)
    code, _, err = run(capsys, "train", "--data", "cifar10", "--data-arg", f"root={root}", "--epochs", "1",
                       "--out", str(tmp_path / "x"))
    assert code == 3 and "data_batch_1" in err and not sentinel.exists()


def test_truncated_artifact_and_wrong_architecture_exit_3(capsys, trained, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    w = broken / "model.safetensors"
    w.write_bytes(w.read_bytes()[:50])
    code, _, err = run(capsys, "eval", str(broken))
    assert code == 3 and "model.safetensors" in err
    other = tmp_path / "other"
    shutil.copytree(trained, other)
    meta = json.loads((other / "condense.json").read_text())
    meta["architecture"]["kwargs"]["hidden"] = [16]
    (other / "condense.json").write_text(json.dumps(meta))
    code, _, err = run(capsys, "eval", str(other))
    assert code == 3 and "do not fit the architecture" in err


def test_loss_turning_nan_is_exit_4(capsys, tmp_path):
    code, _, err = run(capsys, "train", "--model", "mlp", "--epochs", "3", "--lr", "1e11", "--optimizer", "sgd",
                       "--set", "max_nonfinite_steps=2", "--out", str(tmp_path / "x"))
    assert code == 4 and "non-finite" in err


def test_pickle_needs_trust_flag(capsys, trained, tmp_path):
    import torch

    from condense.artifacts import load

    p = tmp_path / "m.pt"
    torch.save(load(trained), p)
    code, _, err = run(capsys, "eval", str(p), "--data", "digits")
    assert code == 3 and "--trust-pickle" in err
    code, _, _ = run(capsys, "eval", str(p), "--data", "digits", "--trust-pickle")
    assert code == 0


def test_bad_usage_is_exit_2(capsys, tmp_path):
    assert main(["train"]) == 2
    assert main(["frobnicate"]) == 2
    code, _, err = run(capsys, "train", "--model-arg", "hidden=[", "--out", str(tmp_path / "x"))
    assert code == 2 and "--model-arg: cannot read the value of 'hidden'" in err


def test_reduce_and_pretrain_commands(capsys, tmp_path):
    code, out, _ = run(capsys, "reduce", "--data", "breast_cancer", "--method", "pca", "--set", "n_components=5",
                       "--out", str(tmp_path / "pca"), "--json")
    assert code == 0 and json.loads(out)["after"]["input_shape"] == [5] and (tmp_path / "pca" / "transform.json").exists()
    code, out, _ = run(capsys, "reduce", "--method", "coreset", "--set", "fraction=0.25", "--set", "on=inputs",
                       "--out", str(tmp_path / "core"), "--json")
    r = json.loads(out)
    assert code == 0 and r["after"]["train"] == len(r["positions"]) < r["before"]["train"]
    code, _, err = run(capsys, "reduce", "--data", "breast_cancer", "--method", "pca", "--set", "n_components=99",
                       "--out", str(tmp_path / "bad"))
    assert code == 2 and "more than the 30 features" in err
    code, out, _ = run(capsys, "pretrain", "--model", "cnn", "--model-arg", "width=4", "--method", "simclr",
                       "--epochs", "1", "--out", str(tmp_path / "ssl"), "--json")
    assert code == 0 and (tmp_path / "ssl" / "model.safetensors").exists()


USER_NETS = '''
from torch import nn


def small_cnn(width: int = 16, num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))
'''


def test_user_model_from_a_pt_file_with_model_factory(capsys, tmp_path, monkeypatch):
    import torch

    from condense.artifacts import load

    (tmp_path / "user_nets_cli.py").write_text(USER_NETS)
    monkeypatch.syspath_prepend(str(tmp_path))
    from user_nets_cli import small_cnn

    torch.manual_seed(0)
    net = small_cnn(width=8)
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    torch.save(net, tmp_path / "whole.pt")
    arch = ["--model", "user_nets_cli:small_cnn", "--model-arg", "width=8"]
    prune = ["--data", "digits", "--ratio", "0.5", "--recover", "none", "--json"]

    # a state_dict without its architecture: told how to name it, nothing read as code
    code, _, err = run(capsys, "prune", str(tmp_path / "weights.pt"), *prune, "--out", str(tmp_path / "x"))
    assert code == 2 and "state_dict" in err and "--model package.module:factory" in err
    # with it: built by the factory, loaded strictly, pruned and saved as a condense artifact
    code, out, err = run(capsys, "prune", str(tmp_path / "weights.pt"), *arch, *prune, "--out", str(tmp_path / "sd"))
    assert code == 0, err
    assert json.loads(out)["params"] < json.loads(out)["params_before"]
    meta = json.loads((tmp_path / "sd" / "condense.json").read_text())
    assert meta["architecture"] == {"name": "user_nets_cli:small_cnn", "kwargs": {"width": 8}}
    assert (tmp_path / "sd" / "model.safetensors").exists() and not list((tmp_path / "sd").glob("*.pt"))
    reloaded = load(tmp_path / "sd", trust_code=True)  # the artifact names the user's factory: code to run
    assert reloaded[0].out_channels == 4  # the edit log replayed on the factory's architecture
    code, _, err = run(capsys, "eval", str(tmp_path / "sd"), "--json")  # refused, nothing imported: the user opts in
    assert code == 3 and "'user_nets_cli:small_cnn'" in err and "--trust-code" in err
    code, out, _ = run(capsys, "eval", str(tmp_path / "sd"), "--trust-code", "--json")  # the dataset is recorded
    assert code == 0 and json.loads(out)["n"] > 0
    # the weights must fit the architecture named, strictly
    code, _, err = run(capsys, "eval", str(tmp_path / "weights.pt"), "--model", "user_nets_cli:small_cnn",
                       "--model-arg", "width=16", "--data", "digits")
    assert code == 3 and "weights do not fit" in err and "user_nets_cli:small_cnn" in err
    code, out, _ = run(capsys, "eval", str(tmp_path / "weights.pt"), *arch, "--data", "digits", "--json")
    assert code == 0 and json.loads(out)["n"] > 0

    # a pickled whole model: pruning it would end in an artifact without a spec, so it is refused first
    code, _, err = run(capsys, "prune", str(tmp_path / "whole.pt"), "--trust-pickle", *prune, "--out", str(tmp_path / "y"))
    assert code == 2 and "--model package.module:factory" in err and not (tmp_path / "y").exists()
    code, _, err = run(capsys, "prune", str(tmp_path / "whole.pt"), "--trust-pickle", *arch, *prune,
                       "--out", str(tmp_path / "pk"))
    assert code == 0, err
    assert json.loads((tmp_path / "pk" / "condense.json").read_text())["architecture"]["name"] == "user_nets_cli:small_cnn"
    pk, sd = load(tmp_path / "pk", trust_code=True), load(tmp_path / "sd", trust_code=True)
    assert all(torch.equal(a, b) for a, b in zip(pk.state_dict().values(), sd.state_dict().values(), strict=True))

    # quantize takes the same flags: the state_dict becomes a quantized artifact with an int8 ONNX
    code, out, err = run(capsys, "quantize", str(tmp_path / "weights.pt"), *arch, "--data", "digits",
                         "--latency-batches", "--out", str(tmp_path / "q"), "--json")
    assert code == 0, err
    assert (tmp_path / "q" / "condense.json").exists() and list((tmp_path / "q").glob("*.onnx"))

    # --model names the architecture of a .pt file only
    code, _, err = run(capsys, "eval", str(tmp_path / "sd"), *arch)
    assert code == 2 and "records its own architecture" in err
