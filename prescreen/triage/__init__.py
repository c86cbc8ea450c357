"""Pure decisions of the reading side, tested without servers: routing rules (YAML, validated with
line numbers), priority with aging and SLA due times, and the double-review state machine."""
