"""prescreen: AI pre-screening of ECGs, ultrasound and radiographs for telemedicine."""

from __future__ import annotations

__version__ = "0.1.0"
