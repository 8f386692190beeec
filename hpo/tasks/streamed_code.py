"""The code a streamed bundle's content depends on, for its cache key.

Both tasks that stream their splits through the user's model (the benchmark-format
tables and the Python factory) build their bundles with these modules; a change to any
of them must rebuild those bundles, so their code fingerprints start from this list.
"""

from __future__ import annotations

from hpo.debias import references
from hpo.tasks import batches, bundle, collect, reference_scores, row_sampling, streaming

STREAMED_BUNDLE_CODE = (
    bundle,
    collect,
    reference_scores,
    streaming,
    batches,
    row_sampling,
    *references.CODE,
)
