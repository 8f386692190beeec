"""The controls `params.controls` may name. A new one is a module and one line here."""

from __future__ import annotations

from hpo.debias.controls.base import Control
from hpo.debias.controls.neurons import NEURONS
from hpo.debias.controls.svd import SVD
from hpo.debias.controls.untrained import RANDOM
from hpo.registry import Registry

CONTROLS: Registry[Control] = Registry("control")
CONTROLS.register("random", RANDOM)
CONTROLS.register("svd", SVD)
CONTROLS.register("neurons", NEURONS)


def get_control(name: str) -> Control:
    return CONTROLS.get(name)
