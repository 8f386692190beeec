"""The study service: study files, search space, samplers, storage, objective, workers."""
