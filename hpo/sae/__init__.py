"""The Faithful-SAE: model, losses and training loop."""
