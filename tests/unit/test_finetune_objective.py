"""The objective's math: L2-SP, distillation, λ and β scaling, label smoothing."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sft_engine.finetune.objective import L2SP, Distill, FinetuneObjective


class Tiny(nn.Module):
    """A conv backbone with BatchNorm and an ``fc`` head, like the torchvision classifiers."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 1).flatten(1))


@pytest.fixture()
def model() -> Tiny:
    torch.manual_seed(0)
    return Tiny(3)


def test_l2sp_is_zero_at_the_pretrained_weights(model: Tiny) -> None:
    reg = L2SP(model, "fc.")
    assert reg.penalty().item() == 0.0


def test_l2sp_excludes_the_head_and_is_half_the_squared_distance(model: Tiny) -> None:
    reg = L2SP(model, "fc.")
    with torch.no_grad():
        model.fc.weight.add_(5.0)  # moving the head does not count
    assert reg.penalty().item() == 0.0
    with torch.no_grad():
        model.conv.weight.add_(0.1)
        model.bn.bias.add_(-0.2)
    expected = 0.5 * (model.conv.weight.numel() * 0.1**2 + model.bn.bias.numel() * 0.2**2)
    assert reg.penalty().item() == pytest.approx(expected, rel=1e-5)


def test_l2sp_head_term_is_plain_l2_of_the_head(model: Tiny) -> None:
    reg = L2SP(model, "fc.")
    expected = 0.5 * (model.fc.weight.pow(2).sum() + model.fc.bias.pow(2).sum())
    assert reg.head_penalty().item() == pytest.approx(expected.item(), rel=1e-6)


def test_l2sp_gradient_pulls_towards_the_reference(model: Tiny) -> None:
    reference = {k: v.clone() for k, v in model.named_parameters()}
    reg = L2SP(model, "fc.", reference=reference)
    with torch.no_grad():
        model.conv.weight.add_(0.3)
    reg.penalty().backward()
    assert torch.allclose(model.conv.weight.grad, torch.full_like(model.conv.weight, 0.3), atol=1e-6)
    assert model.fc.weight.grad is None


def test_lambda_and_head_lambda_scale_their_terms(model: Tiny) -> None:
    reg = L2SP(model, "fc.")
    with torch.no_grad():
        model.conv.weight.add_(0.1)
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    logits = model(x)
    base = FinetuneObjective("l2sp", reg_lambda=0.0, head_lambda=0.0, l2sp=reg)(logits, y)
    terms = FinetuneObjective("l2sp", reg_lambda=0.5, head_lambda=0.25, l2sp=reg)(logits, y)
    assert base.total.item() == pytest.approx(base.task.item())
    assert terms.pre.item() > 0 and terms.head.item() > 0
    assert terms.total.item() == pytest.approx(terms.task.item() + 0.5 * terms.pre.item() + 0.25 * terms.head.item(), rel=1e-6)
    double = FinetuneObjective("l2sp", reg_lambda=1.0, head_lambda=0.25, l2sp=reg)(logits, y)
    assert double.total.item() - terms.total.item() == pytest.approx(0.5 * terms.pre.item(), rel=1e-5)


def test_none_has_no_pre_term_and_head_lambda_only_applies_to_l2sp(model: Tiny) -> None:
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    terms = FinetuneObjective("none", reg_lambda=3.0, head_lambda=1.0)(model(x), y)
    assert terms.pre.item() == 0.0 and terms.head.item() == 0.0
    assert terms.total.item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)


def test_label_smoothing_matches_torch(model: Tiny) -> None:
    x, y = torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    logits = model(x)
    terms = FinetuneObjective("none", label_smoothing=0.1)(logits, y)
    assert terms.task.item() == pytest.approx(F.cross_entropy(logits, y, label_smoothing=0.1).item(), rel=1e-6)
    assert terms.task.item() != pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_distill_is_zero_when_the_student_equals_the_teacher() -> None:
    torch.manual_seed(0)
    teacher = Tiny(5)
    student = copy.deepcopy(teacher)
    student.fc = nn.Linear(4, 3)  # new task, new head
    distill = Distill(student, "fc", copy.deepcopy(teacher), temperature=2.0)
    student.eval()
    x = torch.randn(6, 3, 8, 8)
    student(x)
    assert distill.penalty(x).item() == pytest.approx(0.0, abs=1e-6)


def test_distill_grows_when_the_backbone_moves_and_only_trains_the_student() -> None:
    torch.manual_seed(0)
    teacher = Tiny(5)
    student = copy.deepcopy(teacher)
    student.fc = nn.Linear(4, 3)
    distill = Distill(student, "fc", copy.deepcopy(teacher), temperature=1.0)
    student.eval()
    with torch.no_grad():
        student.conv.weight.mul_(-1.5)
    x = torch.randn(6, 3, 8, 8)
    logits = student(x)
    objective = FinetuneObjective("distill", reg_lambda=2.0, distill=distill)
    terms = objective(logits, torch.tensor([0, 1, 2, 0, 1, 2]), x)
    assert terms.pre.item() > 1e-3
    assert terms.total.item() == pytest.approx(terms.task.item() + 2.0 * terms.pre.item(), rel=1e-6)
    terms.total.backward()
    assert student.conv.weight.grad is not None and student.conv.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in distill.teacher.parameters())
    assert all(p.grad is None for p in distill.old_head.parameters())


def test_distill_temperature_softens_the_targets() -> None:
    torch.manual_seed(0)
    teacher = Tiny(5)
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        student.conv.weight.add_(0.5)
    x = torch.randn(6, 3, 8, 8)
    values = []
    for t in (1.0, 4.0):
        d = Distill(student, "fc", copy.deepcopy(teacher), temperature=t)
        student.eval()
        student(x)
        t_logits, s_logits = teacher.eval()(x), d.old_head(d._features)
        manual = F.kl_div(F.log_softmax(s_logits / t, 1), F.softmax(t_logits / t, 1), reduction="batchmean") * t * t
        values.append(d.penalty(x).item())
        assert values[-1] == pytest.approx(manual.item(), rel=1e-4)
        d.remove()
    assert values[0] != pytest.approx(values[1])
