"""The paper's learning-rate schedule (PAPER.md section 2): start at 1e-2, divide by 10 when the validation accuracy
stops improving, three times in all; at the next plateau, learning stops. Epochs at chance level (a net from
N(0, 0.01) that has not started learning) are not a plateau: accuracy cannot stop improving before it starts, and
dividing the rate there ends the run before it learns (measured: the miniature study's net A, seed 1, stayed at 90%
error through three decays).

`rate_epochs` replaces the plateau rule by a schedule fixed in epochs (so many epochs at lr, lr / 10, ...; then
stop), counted from the first epoch above chance. Not the paper's rule: for a small task whose epoch is a few hundred
updates, where the validation curve at lr 1e-2 swings by more than it falls in two epochs, so the epoch the rule
first divides the rate on is luck (BENCHMARKS.md, "A schedule fixed in epochs")."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class PlateauSchedule:
    lr: float = 1e-2
    patience: int = 2          # epochs without improvement before the rate is divided
    factor: float = 0.1
    max_decays: int = 3
    min_delta: float = 0.0     # an improvement must exceed this (accuracy, 0-1)
    chance: float = 0.0        # accuracy at or below this: the net has not started learning, no plateau is counted
    give_up: int = 0           # stop a run that is still at chance after this many epochs (0: never)
    rate_epochs: list[int] = field(default_factory=list)  # a fixed schedule: epochs at each rate (empty: plateaus)
    rate_epoch: int = 0        # epochs run at the current rate (the fixed schedule)
    chance_epochs: int = 0
    best: float = float("-inf")
    bad_epochs: int = 0
    decays: int = 0
    stopped: bool = False

    def step(self, accuracy: float | None, cut_short: bool = False) -> str:
        """Record one epoch's validation accuracy; returns "improved", "wait", "decay", "stop", "chance", "gave up"
        (still at chance after `give_up` epochs, never having left it) or "not validated" (`accuracy` None: an epoch
        the fixed schedule counts without its validation, where `may_skip_validation`). `cut_short`: the epoch cap is
        near, so a schedule that has not decayed yet decays now (TrainConfig.final_decay) unless the net is still at
        chance."""
        if accuracy is None and not self.may_skip_validation():
            raise ValueError("only the fixed schedule, above chance, counts an epoch without its validation")
        action = self._step(accuracy)
        if cut_short and not self.rate_epochs and action in ("improved", "wait") and self.decays == 0 < self.max_decays:
            return self.decay()
        return action

    def _step(self, accuracy: float | None) -> str:
        if self.stopped:
            return "stop"
        if accuracy is not None and accuracy <= self.chance and not (self.rate_epochs and self.best > float("-inf")):
            self.chance_epochs += self.best == float("-inf")
            if self.give_up and self.chance_epochs >= self.give_up and self.best == float("-inf"):
                self.stopped = True
                return "gave up"
            return "chance"
        if self.rate_epochs:
            return self._fixed(accuracy)
        if accuracy > self.best + self.min_delta:
            self.best, self.bad_epochs = accuracy, 0
            return "improved"
        self.bad_epochs += 1
        if self.bad_epochs < self.patience:
            return "wait"
        self.bad_epochs = 0
        if self.decays >= self.max_decays:
            self.stopped = True
            return "stop"
        return self.decay()

    def may_skip_validation(self) -> bool:
        """Whether the next epoch's validation decides nothing here but which epoch is best: a fixed schedule, the net
        above chance, still at its first rate (TrainConfig.validate_first_rate)."""
        return bool(self.rate_epochs) and self.best > float("-inf") and self.decays == 0 and not self.stopped

    def _fixed(self, accuracy: float | None) -> str:
        improved = accuracy is not None and accuracy > self.best + self.min_delta
        if accuracy is not None:
            self.best = max(self.best, accuracy)
        self.rate_epoch += 1
        if self.rate_epoch < self.rate_epochs[self.decays]:
            return "not validated" if accuracy is None else "improved" if improved else "wait"
        self.rate_epoch = 0
        if self.decays >= len(self.rate_epochs) - 1:
            self.stopped = True
            return "stop"
        return self.decay()

    def decay(self) -> str:
        """Divide the rate now (a plateau, or a schedule cut short by its epoch cap: TrainConfig.final_decay)."""
        self.decays += 1
        self.lr *= self.factor
        self.bad_epochs = 0
        return "decay"

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v)
