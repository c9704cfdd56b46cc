"""Building any classifier: the preprocessing a build resolves, ``--exported`` programs, and one failing candidate among many.

The preprocessing comes from a fine-tune's record, a file, the arch's source (any arch
beyond the six CNNs) or the plain resize, with given fields on top; a ``torch.export``
program is loaded tensors-only and refused without its preprocessing.
"""

from __future__ import annotations

import argparse
import json
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from sft_engine.build_config import BuildConfig, config_from_sources, default_model_name
from sft_engine.cli import build_parser
from sft_engine.commands.build import config_from_args
from sft_engine.errors import ConfigError, ModelError
from sft_engine.models.exported import load_exported
from sft_engine.models.preprocessing import load_preprocess_config
from sft_engine.preprocess import Preprocessing

timm = pytest.importorskip("timm")


def _cfg(**kw) -> BuildConfig:
    return BuildConfig(num_classes=3, allow_random_weights=True, **kw).validated()


def test_default_names_are_safe_repository_names() -> None:
    assert default_model_name("timm:convnext_tiny") == "timm_convnext_tiny"
    assert default_model_name("timm:vit_base_patch16_224.augreg_in21k") == "timm_vit_base_patch16_224.augreg_in21k"
    assert default_model_name("resnet50") == "resnet50"
    assert _cfg(arch="timm:test_vit").name == "timm_test_vit"


def test_the_six_cnns_keep_the_plain_resize_and_every_other_arch_gets_its_source() -> None:
    legacy = _cfg(arch="resnet18").preprocessing
    assert (legacy.input_size, legacy.crop_mode, legacy.resize_size, legacy.resize) == (224, "squash", None, "bilinear")
    vit = _cfg(arch="timm:test_vit")
    assert (vit.input_size, vit.resize_size, vit.crop_mode, vit.interpolation, vit.mean) == (160, 168, "center", "bicubic", (0.5, 0.5, 0.5))
    assert vit.preprocess_origin == "timm:test_vit's source"
    assert vit.preprocessing.to_parameters()["preprocess_resize_size"] == "168"
    source = _cfg(arch="torchvision:resnet50", preprocess="source")
    assert source.arch == "resnet50"  # stored canonical
    assert (source.input_size, source.resize_size, source.crop_mode) == (224, 232, "center")
    plain = _cfg(arch="timm:test_vit", preprocess="plain").preprocessing
    assert (plain.input_size, plain.crop_mode, plain.mean) == (160, "squash", (0.485, 0.456, 0.406))


def test_given_fields_override_the_source_and_are_recorded() -> None:
    cfg = config_from_sources(flags={"arch": "timm:test_vit", "num_classes": 3, "allow_random_weights": True, "input_size": 128,
                                     "mean": "0.4,0.4,0.4"}).validated()
    # input_size alone keeps timm's crop_pct (160/168), as resolve_data_config does
    assert (cfg.input_size, cfg.resize_size, cfg.mean, cfg.interpolation) == (128, 134, (0.4, 0.4, 0.4), "bicubic")
    assert cfg.preprocess_origin == "timm:test_vit's source, overridden: input_size, mean"
    assert cfg.describe()["preprocess_origin"] == cfg.preprocess_origin
    cfg = _cfg(arch="timm:test_vit", input_size=128, resize_size=140, crop_mode="border")
    assert (cfg.resize_size, cfg.crop_mode) == (140, "border")
    with pytest.raises(ConfigError, match="unknown --preprocess"):
        _cfg(arch="resnet18", preprocess="timm")


def test_a_finetune_record_is_what_the_build_serves(tmp_path: Path) -> None:
    prep = Preprocessing(input_size=160, resize_size=168, crop_mode="center", resize="bicubic", mean=(0.5,) * 3, std=(0.5,) * 3)
    meta = {"format": "sft-engine/finetune@1", "arch": "timm:test_vit", "num_classes": 2, "labels": ["a", "b"], "input_size": 160,
            "mean": [0.5] * 3, "std": [0.5] * 3, "training": {"preprocessing": prep.to_parameters()}}
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    (tmp_path / "model.safetensors").write_bytes(b"")
    cfg = config_from_sources(from_finetune=tmp_path)
    assert cfg.preprocessing == prep
    # an output of an earlier version: the plain resize of its three fields, whatever the arch's source says
    del meta["training"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    old = config_from_sources(from_finetune=tmp_path).preprocessing
    assert (old.crop_mode, old.resize_size or old.input_size, old.resize) == ("squash", 160, "bilinear")
    assert "preprocess_resize_size" not in old.to_parameters()  # the config that build wrote before


def test_a_preprocess_file_names_every_step(tmp_path: Path) -> None:
    toml = tmp_path / "p.toml"
    toml.write_text('[preprocess]\ninput_size = 160\ncrop_pct = 0.95\ncrop_mode = "center"\ninterpolation = "bicubic"\n'
                    'mean = [0.5, 0.5, 0.5]\nstd = [0.5, 0.5, 0.5]\n')
    assert load_preprocess_config(toml).resize_size == 168
    data = dict(timm.data.resolve_data_config({}, model=timm.create_model("test_convnext")))
    (tmp_path / "timm.json").write_text(json.dumps(data))  # timm's own data config, as it is
    got = load_preprocess_config(tmp_path / "timm.json")
    assert (got.input_size, got.resize_size, got.resize, got.mean) == (160, 168, "bicubic", (0.5, 0.5, 0.5))
    del data["crop_pct"]
    (tmp_path / "partial.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match=r"does not say resize_size \(or crop_pct\); preprocessing is never guessed"):
        load_preprocess_config(tmp_path / "partial.json")
    (tmp_path / "extra.json").write_text(json.dumps({**data, "crop_pct": 0.9, "fill": 0}))
    with pytest.raises(ConfigError, match="unknown key 'fill'"):
        load_preprocess_config(tmp_path / "extra.json")


class _Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


@pytest.fixture(scope="module")
def program(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pt2") / "net.pt2"
    torch.manual_seed(0)
    torch.export.save(torch.export.export(_Net().eval(), (torch.randn(2, 3, 32, 32),),
                                          dynamic_shapes={"x": {0: torch.export.Dim("batch", max=16)}}), path)
    return path


def _prep_file(tmp_path: Path, size: int = 32) -> Path:
    path = tmp_path / "prep.json"
    path.write_text(json.dumps({"input_size": size, "crop_mode": "squash", "interpolation": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3}))
    return path


def test_an_exported_program_brings_its_class_count_and_needs_its_preprocessing(program: Path, tmp_path: Path) -> None:
    cfg = BuildConfig(exported=program, preprocess_config=_prep_file(tmp_path), max_batch_size=8).validated()
    assert (cfg.num_classes, cfg.arch, cfg.name, cfg.input_size) == (3, "exported", "net", 32)
    model = load_exported(program)
    assert model(torch.randn(5, 3, 32, 32)).shape == (5, 3)
    with pytest.raises(ConfigError, match="--exported needs --preprocess-config FILE"):
        BuildConfig(exported=program).validated()
    with pytest.raises(ConfigError, match="takes 3x32x32 inputs, the preprocessing makes 3x64x64"):
        BuildConfig(exported=program, preprocess_config=_prep_file(tmp_path, 64)).validated()
    with pytest.raises(ConfigError, match="batches up to 16, below --max-batch-size 32"):
        BuildConfig(exported=program, preprocess_config=_prep_file(tmp_path), max_batch_size=32).validated()
    with pytest.raises(ConfigError, match="--arch and --exported both name the model"):
        config_from_sources(flags={"exported": program, "preprocess_config": _prep_file(tmp_path), "arch": "resnet18"}).validated()


def test_a_static_batch_program_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "static.pt2"
    torch.export.save(torch.export.export(_Net().eval(), (torch.randn(2, 3, 32, 32),)), path)
    with pytest.raises(ModelError, match="static batch of 2"):
        load_exported(path)


class _Marker:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (Path(self.path), "ran"))


def _rewrite(src: Path, dst: Path, replace: dict[str, bytes] | None = None, add: dict[str, bytes] | None = None) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            for suffix, new in (replace or {}).items():
                if item.filename.endswith(suffix):
                    data = new
            zout.writestr(item, data)
        for name, data in (add or {}).items():
            zout.writestr(name, data)


def test_loading_a_program_never_runs_pickled_code(program: Path, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt2"
    # torch.export.load falls back to torch.load(weights_only=False) for the example inputs it cannot read safely
    _rewrite(program, evil, replace={"data/sample_inputs/model.pt": pickle.dumps(_Marker(str(marker)))})
    with pytest.raises(ModelError, match="cannot be loaded with tensors only"):
        load_exported(evil)
    assert not marker.exists()
    prefix = zipfile.ZipFile(program).namelist()[0].split("/")[0]
    opaque = tmp_path / "opaque.pt2"
    _rewrite(program, opaque, add={f"{prefix}/data/constants/opaque_obj_0": pickle.dumps(_Marker(str(marker)))})
    with pytest.raises(ModelError, match="holds a pickled Python object .* and is refused"):
        load_exported(opaque)
    assert not marker.exists()
    (tmp_path / "junk.pt2").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="is not a torch.export archive"):
        load_exported(tmp_path / "junk.pt2")


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["build", *argv])


def test_build_flags_reach_the_config() -> None:
    cfg = config_from_args(_args("--arch", "timm:test_vit", "--preprocess", "source", "--resize-size", "180", "--crop-mode", "border",
                                 "--interpolation", "bilinear", "--num-classes", "3", "--allow-random-weights")).validated()
    assert (cfg.resize_size, cfg.crop_mode, cfg.interpolation, cfg.input_size) == (180, "border", "bilinear", 160)
    with pytest.raises(SystemExit):
        _args("--crop-mode", "stretch")


def test_finetune_flags_reach_the_config() -> None:
    from sft_engine.commands.finetune import config_from_args as finetune_config

    args = build_parser().parse_args(["finetune", "--arch", "timm:test_vit", "--preprocess", "source", "--layer-decay", "0.65",
                                      "--crop-mode", "center", "--interpolation", "bicubic", "--resize-size", "170"])
    cfg = finetune_config(args)
    assert (cfg.preprocess, cfg.layer_decay, cfg.crop_mode, cfg.interpolation, cfg.resize_size) == ("source", 0.65, "center", "bicubic", 170)
    assert finetune_config(build_parser().parse_args(["finetune", "--layer-decay", "auto"])).layer_decay == "auto"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["finetune", "--layer-decay", "fast"])


def test_resume_refuses_a_changed_layer_decay_or_preprocess() -> None:
    from sft_engine.finetune.trainer import _FINGERPRINT

    assert {"layer_decay", "preprocess"} <= set(_FINGERPRINT)


def test_one_candidate_that_cannot_export_fails_alone_in_one_line(tiny_weights: Path, tmp_path: Path, monkeypatch) -> None:
    from sft_engine.build import build
    from sft_engine.engines.cpu import target

    def broken(model, example, path):
        raise RuntimeError("aten::roll has no symbolic\n  File x.py, line 3\n    more traceback")

    monkeypatch.setitem(target._EXPORTERS, "torchscript", broken)
    result = build(BuildConfig(arch="resnet18", num_classes=4, weights=tiny_weights, input_size=32, max_batch_size=4,
                               repository=tmp_path / "repo", precision="fp32", parity_samples=4, selection_budget_s=0.2))
    rows = {r["engine"]: r for r in result.candidates}
    assert rows["torchscript"]["error"] == "torchscript export failed: RuntimeError: aten::roll has no symbolic"
    assert rows["onnxruntime"]["exported"] and rows["openvino"]["exported"]
    assert result.engine in ("onnxruntime", "openvino")
