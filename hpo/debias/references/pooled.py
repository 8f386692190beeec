"""One feature vector per sample for a final layer that sees every token.

A sequence classifier may apply its classifier layer to every token and pool after it:
GPT-2's score layer reads each token, and the model returns the logits of the last real
one. A reference that refits that layer on one feature vector per sample (DFR) needs
the layer's input at the token the model reads. Which token that is, is found from the
model itself, not from its class: the logits must equal the layer's output at exactly
one token (selection pooling), or the layer's output on the mean of the tokens' inputs
(mean pooling: a linear layer commutes with the mean). Anything else is not pooling
that a per-sample refit can reproduce, and the reference says so.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from hpo.models.head import logits_of
from hpo.models.layer_types import LINEAR, editable_type
from hpo.models.model_inputs import ModelInputs, call_model, n_samples, take

# |logits − layer output| within this share of the logits' scale: the same computation
# in another order (batched matmul vs the model's own), not a different one
TOLERANCE = 1e-4


def model_logits(model: nn.Module, x: ModelInputs, batch_size: int = 256) -> torch.Tensor:
    """The model's logits on `x`, in batches."""
    n = n_samples(x)
    with torch.no_grad():
        parts = [
            logits_of(call_model(model, take(x, slice(i, i + batch_size))))
            for i in range(0, n, batch_size)
        ]
    return torch.cat(parts)


def layer_output(layer: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """What the editable layer computes on inputs `z` ([..., in] → [..., out])."""
    kind = editable_type(layer) or LINEAR
    out = z @ kind.weight(layer).T.to(z.dtype)
    bias = getattr(layer, "bias", None)
    return out + bias.to(z.dtype) if isinstance(bias, torch.Tensor) else out


def pooled_inputs(
    layer: nn.Module, tokens: torch.Tensor, logits: torch.Tensor
) -> tuple[torch.Tensor | None, str]:
    """The layer's input per sample ([N, in]) given its inputs at every token
    ([N, T, in]) and the model's logits ([N, out]): the token whose output is the logits,
    or the tokens' mean; (None, why) where the logits are neither."""
    with torch.no_grad():
        out = layer_output(layer, tokens)  # [N, T, out]
        scale = TOLERANCE * (1.0 + logits.abs().amax(dim=1))  # [N]
        gap = (out - logits[:, None, :]).abs().amax(dim=2)  # [N, T]
        nearest = gap.argmin(dim=1)
        if bool((gap.gather(1, nearest[:, None]).squeeze(1) <= scale).all()):
            return tokens[torch.arange(len(tokens)), nearest], "the token the model reads"
        mean = tokens.mean(dim=1)
        if bool(((layer_output(layer, mean) - logits).abs().amax(dim=1) <= scale).all()):
            return mean, "the mean over tokens"
    return None, (
        "the model's logits are neither the layer's output at one token nor at the mean "
        "of its tokens' inputs, so no per-sample features reproduce them"
    )


def per_sample_features(
    model: nn.Module,
    name: str,
    x: ModelInputs,
    inputs_of: Callable[[str, ModelInputs], torch.Tensor],
) -> tuple[torch.Tensor | None, str]:
    """Layer `name`'s input, one vector per sample of `x`: as read where it sees one per
    sample, else pooled as the model pools after it (see `pooled_inputs`)."""
    z = inputs_of(name, x)
    if z.dim() == 2:
        return z, "the layer's input"
    if z.dim() != 3:
        return None, f"its inputs have shape {tuple(z.shape)}, not [samples, tokens, features]"
    logits = model_logits(model, x)
    if logits.dim() != 2 or len(logits) != len(z):
        return None, f"the model's logits have shape {tuple(logits.shape)}, not [samples, classes]"
    return pooled_inputs(model.get_submodule(name), z, logits)
