"""Depth reduction on models nobody here wrote: residual blocks found from the exported graph,
whatever their attribute names; blocks called with extra arguments removed; edits replayed."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import condense
from condense.core.errors import ConfigError
from condense.lowrank import droppable_blocks, reduce_depth
from condense.lowrank.depth import SkippedBlock, replay_drop


class Res(nn.Module):  # a plain residual block, no condense attribute names
    def __init__(self, c: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(c, c, 1)
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, c, 3, padding=1))

    def forward(self, x):
        return x + self.body(self.proj(x))


class ProjRes(nn.Module):  # a conv on the skip path: not removable
    def __init__(self, c: int, d: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, d, 3, padding=1), nn.ReLU())
        self.skip = nn.Conv2d(c, d, 1)

    def forward(self, x):
        return torch.relu(self.body(x) + self.skip(x))


class ArgRes(nn.Module):  # called with an extra positional and a keyword argument, returns a tuple
    def __init__(self, c: int) -> None:
        super().__init__()
        self.mix = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x, scale, *, gate=None):
        h = self.mix(x) * scale
        if gate is not None:
            h = h * gate
        return x + h, h.mean()


class Looped(nn.Module):  # one block applied twice (shared weights): neither it nor the loop is a candidate
    def __init__(self, c: int) -> None:
        super().__init__()
        self.block = Res(c)

    def forward(self, x):
        for _ in range(2):
            x = self.block(x)
        return x


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.a, self.b = Res(8), Res(8)
        self.stage = nn.Sequential(Res(8), Res(8))  # a container of residual blocks: its blocks are the candidates
        self.down = ProjRes(8, 16)
        self.c = ArgRes(16)
        self.shared = Res(16)  # called twice: shared weights, not a candidate
        self.loop = Looped(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stage(self.b(self.a(self.stem(x))))
        x = self.down(x)
        x, _ = self.c(x, 0.5, gate=torch.sigmoid(x))
        x = self.loop(self.shared(self.shared(x)))
        return self.head(x.mean((2, 3)))


class Plain(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))


class Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x, mask):
        return self.lin(x) * mask


class Encoder(nn.Module):
    def __init__(self, norm_first: bool = False) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, norm_first=norm_first)
        self.encoder = nn.TransformerEncoder(layer, 3, enable_nested_tensor=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.encoder(self.inp(x)).mean(1))


class ViT(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import ViTConfig, ViTForImageClassification

        self.vit = ViTForImageClassification(ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                                                       intermediate_size=64, image_size=32, patch_size=8, num_labels=4))

    def forward(self, pixel_values):
        return self.vit(pixel_values=pixel_values).logits


class Llama(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import LlamaConfig, LlamaForCausalLM

        self.lm = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids, use_cache=False).logits


class GPT2(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        from transformers import GPT2Config, GPT2LMHeadModel

        self.lm = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=32, n_layer=3, n_head=2, n_positions=64,
                                             bos_token_id=0, eos_token_id=0))

    def forward(self, input_ids):
        return self.lm(input_ids=input_ids, use_cache=False).logits


KINDS = {"net": Net, "plain": Plain, "encoder": Encoder, "encoder_prenorm": lambda: Encoder(True), "vit": ViT,
         "llama": Llama, "gpt2": GPT2}


def make(kind: str) -> nn.Module:
    """Factory `test_depth_any_model:make` (what load() rebuilds before replaying the edits)."""
    return KINDS[kind]()


def build(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return condense.build_model("test_depth_any_model:make", kind=kind).eval()


def example(kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if kind in ("net", "plain"):
        return torch.randn(2, 3, 8, 8, generator=g)
    if kind.startswith("encoder"):
        return torch.randn(2, 5, 6, generator=g)
    if kind == "vit":
        return torch.randn(2, 3, 32, 32, generator=g)
    return torch.randint(0, 64, (2, 7), generator=g)


def replays(model: nn.Module, x: torch.Tensor, folder) -> None:
    condense.save(model, folder)
    again = condense.load(folder, trust_code=True)
    with torch.no_grad():
        assert torch.equal(again(x), model.eval()(x))


def test_residual_blocks_found_whatever_their_names():
    net, x = build("net"), example("net")
    # a, b and the stage's blocks add their own input; c does too and is called with extra args;
    # down has a conv on its skip path, shared and loop.block are called twice, the stage holds only
    # residual blocks, loop's residual adds are all inside its repeated block
    assert droppable_blocks(net, example_inputs=x) == ["a", "b", "stage.0", "stage.1", "c"]
    assert droppable_blocks(net, ignore=["re:^stage"], example_inputs=x) == ["a", "b", "c"]


def test_block_called_with_extra_arguments_is_removed_and_replayed(tmp_path):
    net, x = build("net"), example("net")
    with torch.no_grad():
        shape = net(x).shape
    reduce_depth(net, {"blocks": ["c", "stage.1"]}, example_inputs=x)
    assert isinstance(net.c, SkippedBlock) and net.c.returns == 2 and isinstance(net.stage[1], SkippedBlock)
    assert not any(k.startswith("c.") for k in net.state_dict())
    with torch.no_grad():
        assert net(x).shape == shape
    edit = net.condense_edits[-1]
    assert edit == {"kind": "drop_blocks", "params": {"blocks": ["stage.1", "c"], "returns": {"stage.1": 0, "c": 2}}}
    replays(net, x, tmp_path / "net")


@pytest.mark.parametrize("kind,parent", [("encoder", "encoder.layers"), ("encoder_prenorm", "encoder.layers"),
                                         ("vit", None), ("llama", "lm.model.layers"), ("gpt2", "lm.transformer.h")])
def test_transformer_layers_found_and_removed(kind, parent, tmp_path):
    if kind in ("vit", "llama", "gpt2"):
        pytest.importorskip("transformers")
    model, x = build(kind), example(kind)
    names = droppable_blocks(model, example_inputs=x)
    layers = [n for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == 3]
    assert len(layers) == 1 and (parent is None or layers[0] == parent)
    assert names == [f"{layers[0]}.{i}" for i in range(3)]
    with torch.no_grad():
        y0 = model(x)

    def closeness(m: nn.Module) -> float:
        with torch.no_grad():
            return -float((m(x) - y0).pow(2).mean())

    reduce_depth(model, {"drop": 1}, eval_fn=closeness, example_inputs=x)
    rep = model.condense_depth_report
    assert rep["candidates"] == names and len(rep["dropped"]) == 1 and set(rep["metric_without"]) == set(names)
    assert isinstance(model.get_submodule(rep["dropped"][0]), SkippedBlock)
    with torch.no_grad():
        y = model(x)
    assert y.shape == y0.shape and torch.isfinite(y).all()
    replays(model, x, tmp_path / kind)


def test_first_encoder_layer_removed_keeps_its_face():
    model, x = build("encoder"), example("encoder")
    reduce_depth(model, {"blocks": ["encoder.layers.0"]}, example_inputs=x)
    assert model.encoder.layers[0].self_attn.batch_first is True  # read by nn.TransformerEncoder.forward
    with torch.no_grad():
        assert model(x).shape == (2, 3)


def test_targets_work_where_discovery_finds_nothing(tmp_path):
    model, x = build("plain"), example("plain")
    with pytest.raises(ConfigError, match="no removable block"):
        droppable_blocks(model, example_inputs=x)
    reduce_depth(model, {"targets": ["body.2"], "blocks": ["body.2"]}, example_inputs=x)
    assert isinstance(model.body[2], SkippedBlock)
    replays(model, x, tmp_path / "plain")
    with pytest.raises(ConfigError, match="changes the shape"):
        reduce_depth(build("plain"), {"targets": ["body.0"], "blocks": ["body.0"]}, example_inputs=x)


def test_missing_input_is_named():
    with pytest.raises(ConfigError, match="needs argument 'mask'"):
        droppable_blocks(Masked(), example_inputs=torch.randn(2, 4))


def test_old_edit_logs_replay():
    net, x = build("net"), example("net")
    replay_drop(net, ["a"])  # a log written before `returns` was recorded: a tensor-returning block
    assert isinstance(net.a, SkippedBlock) and isinstance(net.a, nn.Identity)
    with torch.no_grad():
        assert net(x).shape == (2, 5)
    skipped = copy.deepcopy(net.a)
    assert skipped(x, 1, gate=None) is x
