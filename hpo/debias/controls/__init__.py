"""Controls: decompositions that learnt nothing, edited exactly as the trial's SAE is
(base: what a control is; registry: the ones a study may name)."""

from hpo.debias.controls.base import Control
from hpo.debias.controls.registry import CONTROLS, get_control

__all__ = ["CONTROLS", "Control", "get_control"]
