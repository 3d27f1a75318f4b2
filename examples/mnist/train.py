"""Training and measurement: one epoch loop for both models, evaluation, confusion matrix."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .data import batches, random_affine


@dataclass
class TrainConfig:
    """How a model is trained: AdamW or SGD (Nesterov momentum 0.9) with a one-cycle
    learning-rate schedule (OneCycleLR, stepped every batch)."""

    epochs: int
    batch_size: int = 128
    optimizer: str = "adamw"
    max_lr: float = 3e-3
    weight_decay: float = 1e-4
    augment: bool = False
    label_smoothing: float = 0.0


@dataclass
class History:
    """Per-epoch curves. ``train_*`` are averaged over the epoch's (augmented) training
    batches as they were seen; ``test_*`` are measured on the test set after each epoch.
    Accuracies are fractions in [0, 1]."""

    train_loss: list[float] = field(default_factory=list)
    train_accuracy: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, list[float]]:
        return asdict(self)


@dataclass
class Evaluation:
    loss: float
    accuracy: float
    predictions: torch.Tensor
    """(N,) predicted classes."""
    probabilities: torch.Tensor
    """(N, 10) softmax probabilities."""


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000
) -> Evaluation:
    """Loss, accuracy (fraction), predictions and probabilities of ``model`` (in eval mode)."""
    was_training = model.training
    model.eval()
    logits = torch.cat([model(x[idx]) for idx in batches(len(x), batch_size)])
    model.train(was_training)
    probs = logits.softmax(dim=1)
    pred = logits.argmax(dim=1)
    return Evaluation(
        loss=float(F.cross_entropy(logits, y)),
        accuracy=float((pred == y).float().mean()),
        predictions=pred,
        probabilities=probs,
    )


def train(
    model: nn.Module,
    train_x: torch.Tensor,
    train_y: torch.Tensor,
    test_x: torch.Tensor,
    test_y: torch.Tensor,
    config: TrainConfig,
    *,
    seed: int,
    name: str = "model",
    progress: bool = True,
) -> History:
    """Train ``model`` in place with AdamW + OneCycleLR on mini-batches cut by indexing.

    Returns the per-epoch :class:`History`; the model is left in eval mode.
    """
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = -(-len(train_x) // config.batch_size)
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(),
            lr=config.max_lr,
            momentum=0.9,
            nesterov=True,
            weight_decay=config.weight_decay,
        )
    else:
        opt = torch.optim.AdamW(
            model.parameters(), lr=config.max_lr, weight_decay=config.weight_decay
        )
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.max_lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch
    )
    history = History()
    bar = tqdm(
        total=config.epochs * steps_per_epoch,
        desc=f"train {name}",
        unit="batch",
        disable=not progress,
        dynamic_ncols=True,
    )
    for epoch in range(config.epochs):
        start = time.perf_counter()
        model.train()
        loss_sum, correct, seen = 0.0, 0, 0
        for idx in batches(len(train_x), config.batch_size, shuffle=True, generator=gen):
            xb, yb = train_x[idx], train_y[idx]
            if config.augment:
                xb = random_affine(xb, gen)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == yb).sum())
            seen += len(idx)
            bar.update(1)
            bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", loss=f"{loss_sum / seen:.3f}")
        model.eval()
        ev = evaluate(model, test_x, test_y)
        history.train_loss.append(loss_sum / seen)
        history.train_accuracy.append(correct / seen)
        history.test_loss.append(ev.loss)
        history.test_accuracy.append(ev.accuracy)
        history.epoch_seconds.append(time.perf_counter() - start)
        bar.set_postfix(
            epoch=f"{epoch + 1}/{config.epochs}",
            loss=f"{loss_sum / seen:.3f}",
            test_acc=f"{100 * ev.accuracy:.2f}%",
        )
    bar.close()
    model.eval()
    return history


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, classes: int = 10) -> torch.Tensor:
    """(classes, classes) counts; row = true class, column = predicted class."""
    return torch.bincount(y_true * classes + y_pred, minlength=classes * classes).view(
        classes, classes
    )


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Recall of each class (fraction of its test digits classified correctly)."""
    return confusion.diag().double() / confusion.sum(dim=1).clamp_min(1).double()
