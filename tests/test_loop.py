"""The one training loop (smec_dist.train.loop): phases in order, per-phase optimizer and
schedule, freezing, resumption, stop requests and non-finite losses, on a toy task built alone
(no cache, no backbone)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from smec_dist.config import TrainConfig
from smec_dist.errors import SmecError
from smec_dist.method.phase import Phase
from smec_dist.train.loop import Task, Trainer, lr_factor, preview


class Toy(nn.Module):
    """Two scalars a and b, each fitted by its own phase to a target."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.zeros(()))
        self.b = nn.Parameter(torch.zeros(()))


class ToyTask(Task):
    """Phase i pulls parameter i towards TARGET[i] with a squared error; batches are drawn from a
    seeded generator (state that a resumed run must get back)."""

    TARGET = (2.0, -1.0)

    def __init__(self, head: Toy, steps: int, bad_steps: set[int] = frozenset()):
        self.head, self.steps, self.bad_steps = head, steps, set(bad_steps)
        self.gen = torch.Generator().manual_seed(0)
        self.calls: list[tuple[str, int]] = []
        self.begun: list[int] = []
        self.micro = 0

    def begin_phase(self, phase: Phase, index: int) -> None:
        self.begun.append(index)

    def loss(self, phase: Phase, step: int) -> torch.Tensor:
        self.calls.append((phase.name, step))
        self.micro += 1
        noise = torch.rand((), generator=self.gen) * 0.01
        p = self.head.a if phase.name == "a" else self.head.b
        value = (p - self.TARGET[0 if phase.name == "a" else 1] - noise) ** 2
        if self.micro in self.bad_steps:
            return value * float("nan")
        return value

    def describe_batch(self) -> str:
        return f"toy batch {self.micro}"

    def state_dict(self) -> dict:
        return {"gen": self.gen.get_state(), "micro": self.micro}

    def load_state_dict(self, state: dict) -> None:
        self.gen.set_state(state["gen"])
        self.micro = state["micro"]


def _phases(head: Toy, events: list) -> list[Phase]:
    def phase(name: str, param: nn.Parameter) -> Phase:
        return Phase(name, [{"params": [param], "lr": 0.3}], student=None,
                     on_end=lambda: (events.append(("end", name)), param.requires_grad_(False)),
                     start=lambda: events.append(("start", name)),
                     progress=lambda frac: events.append(("progress", name, round(frac, 3))))
    return [phase("a", head.a), phase("b", head.b)]


def _cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"lr_schedule": "constant", **kw})


def _trainer(steps: int = 20, bad_steps=(), events=None, **kw) -> Trainer:
    head = Toy()
    events = [] if events is None else events
    return Trainer(head, _phases(head, events), ToyTask(head, steps, bad_steps), _cfg(**kw.pop("cfg", {})),
                   progress=False, **kw)


def test_phases_train_in_order_each_with_its_own_parameters():
    events: list = []
    tr = _trainer(events=events)
    stats = tr.fit()
    head = tr.head
    assert list(stats) == ["a", "b"] and all(s["steps"] == 20 for s in stats.values())
    assert abs(float(head.a) - 2.0) < 0.35 and abs(float(head.b) + 1.0) < 0.35  # both moved to their target (from 0)
    assert [e for e in events if e[0] != "progress"] == [("start", "a"), ("end", "a"), ("start", "b"), ("end", "b")]
    fracs = [e[2] for e in events if e[:2] == ("progress", "a")]
    assert fracs == [round(i / 20, 3) for i in range(20)]  # before every step, from 0
    assert tr.task.begun == [0, 1] and len(tr.losses) == 40 and tr.phase_index == 2
    assert not head.training


def test_a_finished_phase_is_frozen_and_later_phases_leave_it_alone():
    ends: dict[str, float] = {}
    tr = _trainer(on_phase_end=lambda t, i: ends.setdefault(t.phases[i].name, float(t.head.a)))
    tr.fit()
    assert not tr.head.a.requires_grad and tr.head.a.grad is None
    assert float(tr.head.a) == ends["a"]  # phase b did not move a


def test_each_phase_gets_a_fresh_optimizer_and_schedule():
    """Cosine to zero within every phase: the learning rate restarts at a phase's start."""
    rows: list[dict] = []
    _trainer(steps=10, log_fn=rows.append, cfg={"lr_schedule": "cosine"}).fit()
    per_phase = {name: [r["lr"] for r in rows if r["phase"] == name] for name in ("a", "b")}
    assert per_phase["a"] == per_phase["b"]  # the same schedule, restarted
    assert per_phase["a"][0] == pytest.approx(0.3 * lr_factor(1, 10, "cosine"))
    assert per_phase["a"][-1] == pytest.approx(0.0, abs=1e-12)
    assert rows[0].keys() >= {"phase", "phase_index", "step", "loss", "lr"}


def test_lr_factor_warmup_then_cosine():
    assert lr_factor(0, 10, "constant") == 1.0 and lr_factor(9, 10, "constant") == 1.0
    assert [lr_factor(i, 10, "cosine", warmup=2) for i in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, 10, "cosine", warmup=2) == pytest.approx(1.0)
    assert lr_factor(6, 10, "cosine", warmup=2) == pytest.approx(0.5)
    assert lr_factor(10, 10, "cosine", warmup=2) == pytest.approx(0.0)


@pytest.mark.parametrize("stop_at", [(0, 7), (1, 3)])
def test_resume_from_a_mid_phase_state_gives_the_uninterrupted_run(stop_at):
    """state_dict mid-phase, loaded into a fresh trainer, finishes with the same parameters,
    losses and stats as a run that was never stopped."""
    whole = _trainer()
    whole.fit()

    first = _trainer(should_stop=lambda: False)
    first.should_stop = lambda: (first.phase_index, first.step) == stop_at
    first.fit()
    assert first.stopped and (first.phase_index, first.step) == stop_at
    state = first.state_dict()

    second = _trainer()
    second.load_state_dict(state)
    second.fit()
    assert not second.stopped
    assert torch.equal(second.head.a, whole.head.a) and torch.equal(second.head.b, whole.head.b)
    assert second.losses == whole.losses
    assert second.task.calls == whole.task.calls[len(first.task.calls):]


def test_stop_request_is_not_taken_at_a_phase_end():
    """A stop asked at a phase's last step lets the phase end (freezing applied); the next
    phase's first step is where a resumed run starts."""
    tr = _trainer(steps=5)
    tr.should_stop = lambda: True
    tr.fit()
    assert tr.stopped and (tr.phase_index, tr.step) == (0, 1)


def test_non_finite_loss_stops_naming_phase_step_and_batch():
    tr = _trainer(bad_steps={4})
    with pytest.raises(SmecError, match=r"non-finite loss .* a \(stage 1\) at step 4 of 20, toy batch 4"):
        tr.fit()


def test_non_finite_loss_skip_mode_drops_the_step_and_counts():
    tr = _trainer(bad_steps={4, 5}, cfg={"nonfinite": "skip", "max_skipped": 2})
    tr.fit()
    assert tr.skipped == 2 and len(tr.losses) == 40  # the dropped steps were retried on new batches
    assert all(math.isfinite(v) for v in tr.losses)

    tr = _trainer(bad_steps={4, 5, 6}, cfg={"nonfinite": "skip", "max_skipped": 2})
    with pytest.raises(SmecError, match="3 steps skipped, more than train.max_skipped=2"):
        tr.fit()


def test_preview_lists_a_few_items():
    assert preview([1, 2, 3]) == "1, 2, 3"
    assert preview(list(range(12)), n=3) == "0, 1, 2, ... (12 in all)"
