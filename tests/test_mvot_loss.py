"""MVoT's token discrepancy loss against a brute-force double loop over positions and codes."""

import pytest
import torch

from blt_scale.model.mvot import IMAGE_OFFSET, MVoTConfig, discrepancy_loss
from blt_scale.model.vocab import VOCAB_SIZE


def brute_force(logits, targets, codebook) -> float:
    K, d = codebook.shape
    total = 0.0
    for b in range(targets.shape[0]):
        for t in range(targets.shape[1]):
            target = int(targets[b, t])
            if not IMAGE_OFFSET <= target < IMAGE_OFFSET + K:
                continue
            row = [float(logits[b, t, IMAGE_OFFSET + k]) for k in range(K)]
            top = max(row)
            z = sum(pow(2.718281828459045, v - top) for v in row)
            true = codebook[target - IMAGE_OFFSET]
            for k in range(K):
                mse = sum(float(true[j] - codebook[k, j]) ** 2 for j in range(d)) / d
                total += mse * pow(2.718281828459045, row[k] - top) / z
    return total


def test_discrepancy_loss_equals_a_double_loop():
    g = torch.Generator().manual_seed(0)
    K, d = 7, 5
    codebook = torch.randn(K, d, generator=g)
    logits = torch.randn(2, 9, IMAGE_OFFSET + K, generator=g) * 3
    targets = torch.randint(3, VOCAB_SIZE, (2, 9), generator=g)
    image = torch.rand(2, 9, generator=g) < 0.5
    targets[image] = IMAGE_OFFSET + torch.randint(0, K, (int(image.sum()),), generator=g)
    loss, count = discrepancy_loss(logits, targets, codebook)
    assert int(count) == int(image.sum()) > 0
    assert abs(float(loss) - brute_force(logits, targets, codebook)) < 1e-4 * max(1.0, float(loss))


def test_discrepancy_loss_is_zero_when_all_mass_is_on_the_true_code_and_pushes_to_near_codes():
    K = 4
    codebook = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    targets = torch.tensor([[IMAGE_OFFSET + 1, 5]])
    sure = torch.full((1, 2, IMAGE_OFFSET + K), -1e4)
    sure[0, 0, IMAGE_OFFSET + 1] = 1e4
    assert float(discrepancy_loss(sure, targets, codebook)[0]) == 0.0
    logits = torch.zeros(1, 2, IMAGE_OFFSET + K, requires_grad=True)
    loss, _ = discrepancy_loss(logits, targets, codebook)
    loss.backward()
    grad = logits.grad[0, 0, IMAGE_OFFSET:]
    # d L_D / d logit_k = P_k (S_k - E_P[S]): ordered like the distances to the true code 1
    assert float(grad[1]) < float(grad[0]) < float(grad[2]) < float(grad[3])
    assert abs(float(grad.sum())) < 1e-6
    assert float(logits.grad[0, 1].abs().sum()) == 0  # a byte target adds nothing
    assert float(logits.grad[0, 0, :IMAGE_OFFSET].abs().sum()) == 0


def test_config_and_bad_logits():
    assert MVoTConfig().discrepancy_weight == 0.0
    with pytest.raises(ValueError):
        MVoTConfig(discrepancy_weight=-1)
    with pytest.raises(ValueError, match="needs 259"):
        discrepancy_loss(torch.zeros(1, 1, 260), torch.zeros(1, 1, dtype=torch.long), torch.zeros(4, 2))
