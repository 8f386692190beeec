"""The models that get debiased (the seed's CNN, an MLP, the toy model) and their training."""
