"""Speed features: fastnet, channels_last, compile, hardware-dependent config, per-epoch logging, benchmark output.

Nothing here is timed (speed is measured by scripts/benchmark.py); these check that the fast paths compute the same
thing as the plain ones and that the options default the way the docs say.
"""
from __future__ import annotations

import importlib.util
import json
from functools import partial

import pytest
import pytorch_lightning as pl
import torch

import adaptive_ls  # noqa: F401  (registers the config resolvers)
from adaptive_ls import resolvers
from adaptive_ls.data import CIFAR10DataModule, DigitsDataModule
from adaptive_ls.models import PatchWhitening, fastnet, small_cnn
from adaptive_ls.module import LabelSmoothingClassifier, parameter_groups
from adaptive_ls.smoothing import AdaptiveSmoothing, FixedSmoothing
from tests.runs import REPO_ROOT, compose, run_in


# -- fastnet ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("in_channels,size", [(3, 32), (1, 8)])
def test_fastnet_maps_cifar_and_digits_images_to_logits(in_channels, size):
    net = fastnet(num_classes=10, in_channels=in_channels)
    out = net(torch.randn(4, in_channels, size, size))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


def test_fastnet_matches_airbench_layout():
    net = fastnet()
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 64, 256, 256, 256, 256]
    assert 1.9e6 < sum(p.numel() for p in net.parameters()) < 2.1e6
    assert net[-1].scale == pytest.approx(1 / 9)
    # identity start: with a plain input, the first block's second conv passes its first channels through
    conv = net[3][4]
    x = torch.randn(1, conv.in_channels, 5, 5)
    assert torch.allclose(conv(x), x, atol=1e-6)


def test_fastnet_rejects_bad_widths_naming_the_key():
    with pytest.raises(ValueError, match=r"^widths="):
        fastnet(widths=(64, 256))
    with pytest.raises(ValueError, match=r"^bn_momentum="):
        fastnet(bn_momentum=0.0)


def test_fastnet_config_instantiates():
    import hydra

    cfg = compose("model=fastnet")
    net = hydra.utils.instantiate(cfg.model, num_classes=10, in_channels=3)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_fastnet_rejects_an_unknown_stem_naming_the_key():
    with pytest.raises(ValueError, match=r"^stem='whitening': allowed are conv, whiten"):
        fastnet(stem="whitening")


def test_patch_whitening_gives_patches_unit_covariance_and_is_frozen():
    torch.manual_seed(0)
    base = torch.randn(200, 3, 16, 16)
    images = base + 0.8 * base.roll(1, dims=-1) + 0.5 * base.roll(1, dims=1)  # pixels and channels correlated
    layer = PatchWhitening(3, eps=0.0)
    layer.init_from_data(images)
    out = layer(images)
    assert out.shape == (200, 24, 15, 15) and not layer.weight.requires_grad and not layer.bias.any()
    whitened = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    torch.testing.assert_close(whitened.T @ whitened / whitened.shape[0], torch.eye(12), atol=2e-3, rtol=0)
    torch.testing.assert_close(out[:, 12:], -out[:, :12])  # both signs, so the GELU after it loses nothing


def test_bn_scale_false_freezes_every_batchnorm_scale():
    net = fastnet(bn_scale=False)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(not m.weight.requires_grad and m.bias.requires_grad for m in norms)


def test_parameter_groups_scale_batchnorm_shifts_and_keep_their_decay_per_step():
    net = fastnet(stem="whiten", bn_scale=False, widths=(8, 16, 16))
    sgd = partial(torch.optim.SGD, lr=1.5, momentum=0.85, weight_decay=1.33e-3)
    others, shifts = parameter_groups(net, sgd, 64.0)
    norm_biases = [m.bias for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in shifts["params"]} == {id(p) for p in norm_biases}
    assert shifts["lr"] == pytest.approx(96.0) and shifts["lr"] * shifts["weight_decay"] == pytest.approx(1.5 * 1.33e-3)
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    assert {id(p) for p in others["params"]} == trainable - {id(p) for p in norm_biases}
    assert id(net[0].weight) not in trainable  # the frozen whitening filters are in no group
    assert len(parameter_groups(net, sgd, 1.0)) == 1
    with pytest.raises(ValueError, match=r"norm_bias_lr_scale=64.*optimizer\.lr"):
        parameter_groups(net, lambda params: torch.optim.SGD(params, lr=0.1), 64.0)


def test_hflip_tta_averages_the_logits_of_each_image_and_its_mirror():
    torch.manual_seed(0)
    module = LabelSmoothingClassifier(small_cnn(width=8), eval_tta="hflip").eval()
    images = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        expected = 0.5 * (module.net(images) + module.net(images.flip(-1)))
        torch.testing.assert_close(module.eval_logits(images), expected)
    with pytest.raises(ValueError, match=r"eval_tta='flip': allowed are none, hflip"):
        LabelSmoothingClassifier(small_cnn(width=8), eval_tta="flip")
    with pytest.raises(ValueError, match=r"norm_bias_lr_scale=0"):
        LabelSmoothingClassifier(small_cnn(width=8), norm_bias_lr_scale=0)


def test_fastnet_experiment_sets_whitening_from_training_images_and_scales_shift_lr(tmp_path, tiny_cifar10):
    run_in(tmp_path / "run", "experiment=fastnet_cifar10", f"data.root={tiny_cifar10.root}", "data.verify=false",
           "data.val_size=20", "data.batch_size=16", "model.widths=[8,16,16]", "trainer.max_epochs=1",
           "test_best=false", preset=("trainer.accelerator=cpu", "trainer.enable_progress_bar=false"))
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    with pytest.warns(UserWarning):  # the tiny copy fails torchvision's checksums: loaded with a warning
        datamodule = CIFAR10DataModule(root=str(tiny_cifar10.root), verify=False, val_size=20)
        datamodule.setup("fit")
    expected = PatchWhitening(3)
    expected.init_from_data(datamodule.train_sample(5000))  # the 80 training images of the noise seed's split
    torch.testing.assert_close(checkpoint["state_dict"]["net.0.weight"], expected.weight)  # set from data, frozen
    groups = checkpoint["optimizer_states"][0]["param_groups"]
    assert [g["initial_lr"] for g in groups] == pytest.approx([1.5, 96.0])
    assert [g["weight_decay"] for g in groups] == pytest.approx([1.33e-3, 1.33e-3 / 64])


def test_a_net_set_from_data_needs_a_data_module_that_gives_training_images():
    module = LabelSmoothingClassifier(fastnet(stem="whiten", widths=(8, 16, 16)))
    with pytest.raises(ValueError, match=r"PatchWhitening.*train_sample.*model\.stem=conv"):
        module.init_from_data(None)  # e.g. trainer.fit(module, train_dataloaders=...)


# -- channels_last and compile ----------------------------------------------------------------------------------------


def _classifier(channels_last, seed=0, **kw):
    torch.manual_seed(seed)
    return LabelSmoothingClassifier(small_cnn(width=8), FixedSmoothing(0.1), channels_last=channels_last, **kw)


def test_channels_last_gives_the_same_loss_and_gradients_as_contiguous():
    torch.manual_seed(1)
    batch = (torch.randn(16, 3, 16, 16), torch.randint(0, 10, (16,)), torch.arange(16))
    results = []
    for channels_last in (False, True):
        module = _classifier(channels_last)
        module.set_speed_options()
        conv = module.net[0][0]
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
        loss = module.training_step(batch, 0)["loss"]
        loss.backward()
        results.append((loss.detach(), conv.weight.grad.clone()))
    (loss_a, grad_a), (loss_b, grad_b) = results
    assert torch.allclose(loss_a, loss_b, rtol=1e-5, atol=1e-6)
    assert torch.allclose(grad_a, grad_b, rtol=1e-4, atol=1e-6)


def test_channels_last_is_the_default_and_reaches_the_batches():
    assert compose().module.channels_last is True
    module = LabelSmoothingClassifier(small_cnn(width=8))
    module.set_speed_options()
    seen = []
    module.net.register_forward_pre_hook(lambda _, args: seen.append(args[0]))
    module(torch.randn(2, 3, 8, 8))  # a contiguous batch is converted on the way in
    assert seen[0].is_contiguous(memory_format=torch.channels_last)


def test_speed_options_are_checked():
    with pytest.raises(ValueError, match="channels_last"):
        _classifier("auto")
    with pytest.raises(ValueError, match="compile"):
        _classifier(False, compile="fast")


@pytest.mark.slow
def test_compile_is_off_by_default_and_keeps_checkpoint_keys():
    cfg = compose()
    assert cfg.module.compile is False
    plain = LabelSmoothingClassifier(small_cnn(width=8))
    plain.set_speed_options()
    assert plain.compile_net is False and getattr(plain.net, "_compiled_call_impl", None) is None
    compiled = LabelSmoothingClassifier(small_cnn(width=8), compile=True)
    compiled.set_speed_options()  # marks the net for compilation; nothing is compiled until called
    assert compiled.net._compiled_call_impl is not None
    assert compiled.state_dict().keys() == plain.state_dict().keys()  # checkpoints load either way
    plain.load_state_dict(compiled.state_dict())


# -- hardware-dependent trainer defaults ------------------------------------------------------------------------------


def test_auto_precision_is_bf16_on_a_bf16_gpu_only(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolvers.auto_precision("auto") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolvers.auto_precision("auto") == "bf16-mixed"
    assert resolvers.auto_precision("gpu") == "bf16-mixed"
    assert resolvers.auto_precision("cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolvers.auto_precision("auto") == "32-true"


X86_FLAGS = "fpu vme avx avx2 fma"


@pytest.mark.parametrize("flags, native", [
    (f"flags\t\t: {X86_FLAGS}", False),                              # AVX2 only: bf16 is emulated
    (f"flags\t\t: {X86_FLAGS} avx512f avx512bw", False),            # AVX-512 without its bf16 extension
    (f"flags\t\t: {X86_FLAGS} avx512f avx512_bf16", True),          # Cooper Lake, Zen 4 and later
    (f"flags\t\t: {X86_FLAGS} amx_bf16 amx_tile", True),           # Sapphire Rapids AMX
    ("Features\t: fp asimd sve bf16 i8mm", True),                    # Arm v8.6 (Graviton 3)
    ("Features\t: fp asimd crc32", False),
    ("", False),                                                        # no flags at all: float32
])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\n{flags}\n\nprocessor\t: 1\n{flags}\n")
    assert resolvers.cpu_has_native_bf16(str(cpuinfo)) is native
    assert resolvers.cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_auto_precision_takes_bf16_on_a_cpu_only_when_asked_and_native(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for native in (True, False):
        monkeypatch.setattr(resolvers, "cpu_has_native_bf16", lambda: native)
        assert resolvers.auto_precision("cpu") == "32-true"  # the default trainer: float32 on a CPU
        assert resolvers.auto_precision("cpu", True) == ("bf16-mixed" if native else "32-true")
        assert resolvers.auto_precision("auto", "true") == ("bf16-mixed" if native else "32-true")
        assert resolvers.auto_precision("gpu", True) == "32-true"  # no GPU: no CPU fallback in bf16 either


def test_cifar10_cpu_precision_follows_this_machine():
    """experiment=cifar10_cpu runs bf16 where this CPU computes it natively and float32 where it would be emulated."""
    cfg = compose("experiment=cifar10_cpu", "trainer.accelerator=cpu")
    assert cfg.trainer.precision == ("bf16-mixed" if resolvers.cpu_has_native_bf16() else "32-true")
    assert compose("experiment=cifar10_cpu", "trainer.precision=32-true").trainer.precision == "32-true"


def test_default_trainer_config_resolves_for_this_machine():
    cfg = compose()
    expected = "bf16-mixed" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "32-true"
    assert cfg.trainer.precision == expected
    assert cfg.trainer.benchmark is True
    assert compose("trainer.deterministic=true").trainer.benchmark is False
    assert compose("trainer=cpu").trainer.precision == "32-true"
    assert compose("trainer=gpu").trainer.precision == "bf16-mixed"


def test_progress_bar_is_redrawn_every_n_steps(tmp_path):
    from pytorch_lightning.callbacks import TQDMProgressBar

    from adaptive_ls.train import instantiate_callbacks

    cfg = compose("callbacks.progress_bar.refresh_rate=7", f"paths.output_dir={tmp_path}")
    bars = [c for c in instantiate_callbacks(cfg) if isinstance(c, TQDMProgressBar)]
    assert len(bars) == 1 and bars[0].refresh_rate == 7
    cfg = compose("trainer.enable_progress_bar=false", f"paths.output_dir={tmp_path}")
    assert not any(isinstance(c, TQDMProgressBar) for c in instantiate_callbacks(cfg))


# -- per-epoch training metrics ---------------------------------------------------------------------------------------


def _fit_digits(policy, epochs=2):
    datamodule = DigitsDataModule(root="unused", batch_size=128, seed=0)
    torch.manual_seed(0)
    module = LabelSmoothingClassifier(small_cnn(in_channels=1, width=8), policy,
                                      optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.9))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=epochs, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_train_batches=4, limit_val_batches=1)
    trainer.fit(module, datamodule=datamodule)
    return trainer, module


def test_training_metrics_are_logged_once_per_epoch_with_the_right_values():
    trainer, module = _fit_digits(FixedSmoothing(0.15))
    metrics = trainer.callback_metrics
    assert metrics["smoothing/eps_mean"].item() == pytest.approx(0.15)
    assert "smoothing/eps_min" not in metrics  # batch-constant ε: min/max are not tracked
    assert 0.0 <= metrics["train/acc"].item() <= 1.0 and metrics["train/loss"].item() > 0
    assert not module.train_loss.update_called  # reset at the epoch's end, so epochs do not mix


def test_per_sample_policy_logs_the_range_of_eps():
    trainer, _ = _fit_digits(AdaptiveSmoothing(eps_min=0.05, eps_max=0.35, warmup_epochs=0), epochs=1)
    m = {k: v.item() for k, v in trainer.callback_metrics.items()}
    assert 0.05 <= m["smoothing/eps_min"] <= m["smoothing/eps_mean"] <= m["smoothing/eps_max"] <= 0.35


# -- seeded device augmentation ---------------------------------------------------------------------------------------


def test_device_batches_and_augmentation_are_reproducible_from_the_seed():
    def first_batch(seed):
        dm = DigitsDataModule(root="unused", seed=seed)
        dm.setup("fit")
        images, labels, index = next(iter(dm.train_dataloader()))
        return dm.augment(images), index

    (a, ia), (b, ib), (_, ic) = first_batch(0), first_batch(0), first_batch(1)
    assert torch.equal(a, b) and torch.equal(ia, ib)
    assert not torch.equal(ia, ic)


# -- benchmark script -------------------------------------------------------------------------------------------------


def test_benchmark_json_has_the_documented_keys(tmp_path):
    spec = importlib.util.spec_from_file_location("benchmark", REPO_ROOT / "scripts" / "benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    path = tmp_path / "bench.json"
    benchmark.main(["--model", "small_cnn", "--batch-size", "8", "--steps", "2", "--warmup", "1", "--num-images", "32",
                    "--workers", "0", "--policy", "adaptive", "--json", str(path)])
    out = json.loads(path.read_text())
    for key in benchmark.JSON_KEYS:
        assert key in out, key
    assert out["model"] == "small_cnn" and out["batch_size"] == 8 and out["device"].startswith("CPU")
    for mode in ("package", "raw", "dataloader"):
        assert out[f"{mode}_img_per_s"] > 0
    assert out["package_vs_raw"] == pytest.approx(out["package_img_per_s"] / out["raw_img_per_s"])
    assert out["package_vs_dataloader"] == pytest.approx(out["package_img_per_s"] / out["dataloader_img_per_s"])
    assert out["data"].startswith("synthetic")


def test_dataloader_path_shuffles_like_the_device_path_epoch_by_epoch():
    orders = {}
    for loader in ("device", "dataloader"):
        dm = DigitsDataModule(root="unused", seed=3, loader=loader, batch_size=100)
        dm.setup("fit")
        batches = dm.train_dataloader()
        orders[loader] = [torch.cat([index for _, _, index in batches]) for _epoch in range(2)]
    assert torch.equal(orders["device"][0], orders["dataloader"][0])
    assert torch.equal(orders["device"][1], orders["dataloader"][1])
    assert not torch.equal(orders["device"][0], orders["device"][1])  # a new order every epoch
