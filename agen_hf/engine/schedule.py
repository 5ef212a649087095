"""The paper's learning-rate schedule (section IV.1): divided by 10 every 10 epochs."""


def step_decay(step: int, steps_per_epoch: int, decay_epochs: int = 10,
               factor: float = 0.1) -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based): a pure
    function of the step, so resuming restores it exactly."""
    return factor ** ((step // max(steps_per_epoch, 1)) // decay_epochs)
