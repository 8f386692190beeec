"""Editing a weight and scoring the edit: ablation, group metrics, debiasing methods."""
