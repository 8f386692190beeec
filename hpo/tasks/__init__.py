"""Tasks: data + trained model + how a decomposition is scored (see hpo.tasks.base).

Built in: colored MNIST (the seed's benchmark), the 5-2 toy model of superposition, and
`python`, which runs a user's factory returning `hpo.UserTask`. hpo.tasks.registry names
them; the package itself imports nothing, so `hpo.tasks.user` loads on its own.
"""
