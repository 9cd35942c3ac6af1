"""Training: :mod:`~fusionkit.training.trainer` (TrainConfig, Trainer), :mod:`~fusionkit.training.schedules`,
:mod:`~fusionkit.training.evaluate`, :mod:`~fusionkit.training.distributed` and what they share
(:mod:`~fusionkit.training.runtime`)."""
