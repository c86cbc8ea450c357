"""The run-time flow of a study, one small step class each, driven by the queue in the database:

- :mod:`~prescreen.pipeline.screening`: complete studies become jobs; a job's series → ``Finding``;
- :mod:`~prescreen.pipeline.triage`: findings → worklist items (routing rules, SLA), escalations;
- :mod:`~prescreen.pipeline.outbox`: deliveries out (DICOM SR, edge forwarding) with retry;
- :mod:`~prescreen.pipeline.runtime`: what a service process starts.

It sits between the edges (``serving``, which calls it) and the state (``store``, ``integration``,
``models``, ``triage``), and imports only downward.
"""
