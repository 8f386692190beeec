"""Edit strategies: which components of each decomposed layer go, and how much of each.

One module per strategy (`conditioned`, `attribution`, `both`, `fitted`), each an object
satisfying `hpo.debias.strategies.base.EditStrategy`, and one line in
`hpo.debias.strategies.registry`. `params.ablate` names one.
"""
