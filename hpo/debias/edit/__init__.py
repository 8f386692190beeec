"""The edit procedure, task-free: plan which components of which layers go (and how much
of each), score the plan over α on validation, and run the same procedure on the
controls. A task hands over an `EditTarget` (its model, probe inputs and a scorer)."""
