"""Projection heads, the contrastive loss, towers and the dual encoder."""

from __future__ import annotations

import math

import pytest
import torch

from clipalbum.training.config import HeadCfg, LossCfg, TextTowerCfg, ImageTowerCfg, config_from_dict
from clipalbum.training.heads import ProjectionHead, RMSProjectionHead, build_head
from clipalbum.training.loss import ContrastiveLoss
from clipalbum.training.model import build_model, param_groups
from clipalbum.training.towers import build_image_tower, build_text_tower


class TestHeads:
    @pytest.mark.parametrize("kind", ["mlp", "rms"])
    def test_heads_project_into_the_shared_space(self, kind: str) -> None:
        head = build_head(HeadCfg(kind=kind, dim=16, blocks=2), in_dim=40)
        assert head(torch.randn(5, 40)).shape == (5, 16)

    def test_specified_head_is_linear_gelu_linear_dropout_residual_layernorm(self) -> None:
        head = ProjectionHead(8, 4, dropout=0.0).eval()
        x = torch.randn(3, 8)
        projected = head.projection(x)
        expected = torch.nn.functional.layer_norm(head.fc(torch.nn.functional.gelu(projected)) + projected, (4,),
                                                  head.layer_norm.weight, head.layer_norm.bias)
        torch.testing.assert_close(head(x), expected)

    def test_rms_head_uses_rmsnorm_silu_and_residual_blocks(self) -> None:
        head = RMSProjectionHead(8, 4, dropout=0.0, blocks=1).eval()
        kinds = {type(m).__name__ for m in head.modules()}
        assert {"RMSNorm", "SiLU", "Linear"} <= kinds and "LayerNorm" not in kinds
        # With the block's output layer zeroed, the block is the identity: the residual path carries x.
        torch.nn.init.zeros_(head.blocks[0].down.weight)
        torch.nn.init.zeros_(head.blocks[0].down.bias)
        x = torch.randn(3, 8)
        torch.testing.assert_close(head(x), head.output_norm(head.projection(head.input_norm(x))))

    def test_dropout_is_active_in_training_only(self) -> None:
        head = ProjectionHead(8, 64, dropout=0.5)
        x = torch.randn(4, 8)
        head.eval()
        torch.testing.assert_close(head(x), head(x))
        head.train()
        assert not torch.allclose(head(x), head(x))

    def test_unknown_head_kind_is_refused(self) -> None:
        with pytest.raises(ValueError, match="unknown head kind 'big'"):
            build_head(HeadCfg(kind="big"), 8)


class TestLoss:
    def test_matched_pairs_cost_less_than_shuffled_ones(self) -> None:
        loss = ContrastiveLoss(LossCfg(temperature=0.1, normalize=True))
        images = torch.randn(8, 16)
        texts = images + 0.05 * torch.randn(8, 16)
        assert loss(images, texts) < 0.1 < loss(images, texts[torch.randperm(8)])

    def test_value_is_symmetric_infonce(self) -> None:
        images, texts = torch.randn(4, 6), torch.randn(4, 6)
        logits = texts @ images.T  # temperature 1.0, raw dot products (the default)
        labels = torch.arange(4)
        expected = (torch.nn.functional.cross_entropy(logits, labels)
                    + torch.nn.functional.cross_entropy(logits.T, labels)) / 2
        torch.testing.assert_close(ContrastiveLoss(LossCfg())(images, texts), expected)

    def test_temperature_is_fixed_unless_learnable(self) -> None:
        fixed = ContrastiveLoss(LossCfg(temperature=0.5))
        assert not fixed.log_inv_temperature.requires_grad and math.isclose(fixed.temperature, 0.5, rel_tol=1e-6)
        learned = ContrastiveLoss(LossCfg(temperature=0.5, learnable_temperature=True, normalize=True))
        learned(torch.randn(4, 8), torch.randn(4, 8)).backward()
        assert learned.log_inv_temperature.grad is not None

    def test_soft_targets_equal_hard_ones_for_orthogonal_pairs(self) -> None:
        eye = torch.eye(4) * 10
        hard = ContrastiveLoss(LossCfg())(eye, eye)
        soft = ContrastiveLoss(LossCfg(targets="soft"))(eye, eye)
        torch.testing.assert_close(hard, soft, atol=1e-4, rtol=0)

    def test_bad_settings_are_refused(self) -> None:
        with pytest.raises(ValueError, match="temperature must be > 0"):
            ContrastiveLoss(LossCfg(temperature=0))


class TestTowers:
    def test_timm_vit_tower_at_the_configured_size(self) -> None:
        tower = build_image_tower(ImageTowerCfg(name="test_vit", size=64))
        assert tower(torch.randn(2, 3, 64, 64)).shape == (2, tower.out_dim)

    def test_random_distilbert_has_the_bert_uncased_vocabulary(self) -> None:
        tower = build_text_tower(TextTowerCfg(options={"n_layers": 1, "dim": 32, "hidden_dim": 64, "n_heads": 2}))
        assert tower.encoder.config.vocab_size == 30522 and tower.out_dim == 32
        ids = torch.tensor([[101, 2023, 102, 0], [101, 2023, 2003, 102]])
        out = tower(ids, (ids > 0).long())
        assert out.shape == (2, 32)

    def test_mean_pooling_ignores_padding(self) -> None:
        tower = build_text_tower(TextTowerCfg(pooling="mean", options={"n_layers": 1, "dim": 32,
                                                                       "hidden_dim": 64, "n_heads": 2})).eval()
        ids = torch.tensor([[101, 2023, 102]])
        padded = torch.tensor([[101, 2023, 102, 0, 0]])
        torch.testing.assert_close(tower(ids, torch.ones_like(ids)),
                                   tower(padded, (padded > 0).long()), atol=1e-5, rtol=1e-5)

    def test_packaged_towers_load_offline(self) -> None:
        image = build_image_tower(ImageTowerCfg(kind="efficientnet_lite0", size=224))
        text = build_text_tower(TextTowerCfg(kind="minilm", pooling="mean"))
        assert (image.out_dim, text.out_dim) == (1280, 384)


class TestDualEncoder:
    def _tiny(self, **sections) -> dict:
        values = {"image": {"name": "test_resnet", "size": 32},
                  "text": {"max_length": 16, "options": {"n_layers": 1, "dim": 32, "hidden_dim": 64, "n_heads": 2}},
                  "head": {"dim": 16}}
        for key, extra in sections.items():
            values[key] = {**values.get(key, {}), **extra}
        return values

    def test_encoders_return_unit_vectors(self) -> None:
        model = build_model(config_from_dict(self._tiny())).eval()
        ids = torch.tensor([[101, 2023, 102]])
        assert torch.allclose(model.encode_image(torch.randn(2, 3, 32, 32)).norm(dim=-1), torch.ones(2))
        assert torch.allclose(model.encode_text(ids, torch.ones_like(ids)).norm(dim=-1), torch.ones(1))

    def test_param_groups_carry_the_per_part_learning_rates(self) -> None:
        cfg = config_from_dict(self._tiny())
        groups = {g["name"]: g for g in param_groups(build_model(cfg), cfg)}
        assert {n: g["lr"] for n, g in groups.items()} == {"image": 1e-4, "text": 1e-5, "heads": 1e-3}
        assert all(g["weight_decay"] == 1e-3 for g in groups.values())

    def test_freezing_a_tower_removes_it_from_the_optimizer_but_trainable_prefixes_stay(self) -> None:
        cfg = config_from_dict(self._tiny(image={"freeze": True}, text={"freeze": True, "trainable": ["transformer.layer.0"]}))
        model = build_model(cfg)
        groups = {g["name"]: g for g in param_groups(model, cfg)}
        assert "image" not in groups
        text_names = {n for n, p in model.text_tower.encoder.named_parameters() if p.requires_grad}
        assert text_names and all(n.startswith("transformer.layer.0") for n in text_names)
        model.train()
        assert not model.image_tower.training  # a frozen tower runs as it will when serving
