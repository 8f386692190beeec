"""Study storage: URLs, engines that ride out outages, artifacts, and what a trial stores.

Everything that touches Optuna's storage layer lives here, below the service: the URL
resolver, the engine options, secret redaction, the artifact store, every private
Optuna/optuna-dashboard call (`compat`), the stored names (`attrs`) and the typed records
a trial writes and every reader reads (`records`).
"""
