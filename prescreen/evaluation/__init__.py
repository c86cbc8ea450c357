"""Evaluation: metrics with bootstrap CIs, threshold choice, target verdict, reports."""
